import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from patchcore.apps.service import create_app, load_models, parse_model_argument  # noqa: E402


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(fitted_model, tmp_path_factory) -> Path:
    return fitted_model.save(tmp_path_factory.mktemp("served") / "brick")


@pytest.fixture(scope="module")
def served(model_dir: Path):
    return load_models([str(model_dir), f"second={model_dir}"])


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(create_app(served, max_upload_bytes=2_000_000))


def test_predict_returns_the_library_score_decision_and_overlay(client, served, fitted_model, defect_crop) -> None:
    image = defect_crop[0]
    response = client.post("/predict?model=brick", files={"image": ("defect.png", png_bytes(image), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = fitted_model.predict([image])[0]
    assert body["score"] == expected.score and body["threshold"] == expected.threshold
    assert body["decision"] == "defect" and body["is_anomalous"] is True and body["normalised_score"] > 0.5
    assert (body["width"], body["height"], body["filename"]) == (128, 128, "defect.png")
    assert body["n_regions"] == len(body["regions"]) >= 1
    assert [region["bbox"] for region in body["regions"]] == [list(region.bbox) for region in expected.regions]
    # Why: the region's worst patch as a picture, and the nearest good patch named (the model was fitted on
    # images in memory, so there is no file to picture it from).
    largest = max(body["regions"], key=lambda region: region["area"])
    assert largest["nearest_good"]["image"].startswith("image ")
    assert Image.open(io.BytesIO(base64.b64decode(largest["patch_png_base64"]))).format == "PNG"
    assert largest["good_patch_png_base64"] is None
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (128, 128)


def test_health_models_manifest_and_schema(client, model_dir: Path) -> None:
    assert client.get("/health").json()["models"] == ["brick", "second"]
    listed = client.get("/models").json()
    assert [m["name"] for m in listed] == ["brick", "second"] and listed[0]["threshold"] > 0
    manifest = client.get("/model?model=second").json()
    on_disk = json.loads((model_dir / "manifest.json").read_text())
    on_disk.pop("manifest_sha256")  # checked and set aside on load
    on_disk["backbone"]["weights_source"] = Path(on_disk["backbone"]["weights_source"]).name  # no server paths
    assert manifest == on_disk
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/model", "/models"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "PatchCore inspection" in page.text


@pytest.mark.parametrize(
    ("url", "payload", "status", "message"),
    [
        ("/predict?model=brick", b"", 422, "part.png: empty file"),
        ("/predict?model=brick", b"not an image at all", 422, "part.png: not a readable image"),
        ("/predict?model=brick", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 422, "part.png: not a readable image"),
        ("/predict?model=nope", b"x", 404, "no model named 'nope'"),
        ("/predict", b"x", 400, "several models are served"),
        ("/predict?model=brick", b"x" * 2_100_000, 413, "upload larger than 2000000 bytes"),
    ],
)
def test_bad_requests_get_a_json_error(client, url, payload, status, message) -> None:
    response = client.post(url, files={"image": ("part.png", payload, "image/png")})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_missing_file_field_is_a_422_naming_the_field(client) -> None:
    response = client.post("/predict?model=brick", data={"other": "1"})
    assert response.status_code == 422 and "image" in response.json()["error"]


def test_api_key_is_required_when_set(served, defect_crop) -> None:
    client = TestClient(create_app(served, api_key="s3cret"))
    files = {"image": ("d.png", png_bytes(defect_crop[0]), "image/png")}
    assert client.get("/health").status_code == 200
    assert client.get("/models").status_code == 401
    assert client.post("/predict?model=brick", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/predict?model=brick", files=files, headers={"X-API-Key": "s3cret"}).status_code == 200


@pytest.mark.parametrize("argument", ["../etc=model", "a/b=model", "=model", "x" * 65 + "=model"])
def test_model_names_are_validated(argument: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        parse_model_argument(argument)


def test_concurrent_requests_get_the_same_answers_as_the_library(client, fitted_model, good_test_crops,
                                                                 defect_crop) -> None:
    from concurrent.futures import ThreadPoolExecutor

    images = [defect_crop[0], *good_test_crops[:3]] * 3
    expected = [fitted_model.predict([image])[0].score for image in images]  # one at a time, as the service

    def post(index: int) -> float:
        files = {"image": (f"{index}.png", png_bytes(images[index]), "image/png")}
        response = client.post("/predict?model=second&overlay=false", files=files)
        assert response.status_code == 200 and "overlay_png_base64" not in response.json()
        return response.json()["score"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        scores = list(pool.map(post, range(len(images))))
    assert scores == expected


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_concurrent_oversized_images_get_413_from_their_header_without_memory_growth(served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = TestClient(create_app(served, max_megapixels=40))
    buffer = io.BytesIO()
    Image.new("L", (12_000, 7_000)).save(buffer, format="PNG")  # 84 MP in ~100 KB: 250 MB once decoded as RGB
    bomb = buffer.getvalue()
    assert len(bomb) < 2_000_000

    def post(index: int):
        return client.post("/predict?model=brick", files={"image": (f"big{index}.png", bomb, "image/png")})

    import threading

    before, peak, done = _rss_bytes(), [0], threading.Event()

    def watch() -> None:  # the resident memory's high point while the requests run
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(16)))
    done.set()
    watcher.join()
    growth = peak[0] - before
    assert {r.status_code for r in responses} == {413}
    assert "12000 x 7000 pixels (84.0 MP) is more than the 40 MP allowed" in responses[0].json()["error"]
    assert growth < 100 * 2**20, f"memory grew by {growth / 2**20:.0f} MB"  # one decode alone would be 250 MB


def test_model_manifest_names_files_without_the_servers_folders(client, model_dir: Path) -> None:
    text = json.dumps(client.get("/model?model=brick").json())
    assert str(model_dir.parent) not in text and "/site-packages/" not in text and '"/' not in text
    weights = client.get("/model?model=brick").json()["backbone"]["weights_source"]
    assert weights.endswith(".pth") and "/" not in weights


def test_api_docs_work_offline(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text and "docs-assets/swagger-ui-bundle.js" in page.text
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_tiff_and_16_bit_originals_come_back_as_png(client) -> None:
    ramp = (np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) * 5)  # 16-bit grey, up to 61,435
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="TIFF")
    response = client.post("/predict?model=brick&original=true",
                           files={"image": ("part.tif", buffer.getvalue(), "image/tiff")})
    assert response.status_code == 200, response.text
    original = Image.open(io.BytesIO(base64.b64decode(response.json()["original_png_base64"])))
    assert original.format == "PNG" and original.size == (128, 96) and original.mode == "RGB"
    assert np.asarray(original)[-1, -1, 0] == round(61_435 / 65_535 * 255)  # scaled by 16 bits, as the model saw it


def test_a_false_alarm_rate_can_be_chosen_for_the_service_and_per_request(model_dir: Path, fitted_model,
                                                                          defect_crop) -> None:
    served = load_models([str(model_dir), f"second={model_dir}"], rates=["0.2", "second=0.5"])
    assert (served["brick"].rate, served["second"].rate) == (0.2, 0.5)
    client = TestClient(create_app(served))
    listed = {model["name"]: model for model in client.get("/models").json()}
    assert listed["second"]["false_alarm_rate"] == 0.5
    assert listed["second"]["threshold"] == fitted_model.decision_threshold(0.5).value
    image = ("defect.png", png_bytes(defect_crop[0]), "image/png")
    body = client.post("/predict?model=second", files={"image": image}).json()
    assert body["false_alarm_rate"] == 0.5 and body["threshold"] == fitted_model.decision_threshold(0.5).value
    body = client.post("/predict?model=second&false_alarm_rate=0.3", files={"image": image}).json()
    assert body["false_alarm_rate"] == 0.3 and body["threshold"] == fitted_model.decision_threshold(0.3).value
    assert client.post("/predict?model=second&false_alarm_rate=1.5", files={"image": image}).status_code == 422
    with pytest.raises(ValueError, match="no model is named 'third'"):
        load_models([str(model_dir)], rates=["third=0.1"])
    with pytest.raises(ValueError, match="RATE or NAME=RATE"):
        load_models([str(model_dir)], rates=["often"])
