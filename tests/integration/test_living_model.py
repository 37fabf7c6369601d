"""A model on a changing line: partial_fit, versions and rollback, feedback, hot reload, metrics and drift."""

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance
from sklearn.metrics import roc_auc_score

from tests.helpers import CROP, paste_defect
from patchcore.apps.cli import main
from patchcore.apps.service import create_app, load_models
from patchcore.core.patchcore import PatchCore
from patchcore.core.sampling import coreset_size
from patchcore.data.offline import texture_photo
from patchcore.io.persistence import list_versions
from patchcore.monitoring import drift_report

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def line(brick):
    """A line that changed: first images from the photo's top rows, new ones from its lower middle, and
    held-out images like the new ones (never overlapping them), with and without defects."""
    donor = texture_photo("gravel")
    old = [brick[y : y + CROP, x : x + CROP] for y in range(0, 160, 32) for x in range(0, 384, 48)]
    new = [brick[y : y + CROP, x : x + CROP] for y in (200, 232) for x in range(0, 384, 32)]
    held = [brick[y : y + CROP, x : x + CROP] for y in (264,) for x in range(0, 384, 32)]
    defects = [paste_defect(crop, 40, 30 + 5 * i, 24, donor[100 + 20 * i :]) for i, crop in enumerate(held[:8])]
    return old, new, held, defects


@pytest.mark.slow
def test_partial_fit_learns_the_new_images_keeps_old_rows_and_defects(line) -> None:
    old, new, held, defects = line
    model = PatchCore(image_size=CROP, coreset_ratio=0.1).fit(old)
    old_bank = model.memory_bank_.copy()
    flagged_before = sum(p.is_anomalous for p in model.predict(held))
    model.partial_fit(new)
    flagged_after = sum(p.is_anomalous for p in model.predict(held))
    assert flagged_after < flagged_before  # held-out images like the new ones are no longer false alarms
    np.testing.assert_array_equal(model.memory_bank_[: len(old_bank)], old_bank)  # never drops old rows
    new_patches = len(model.patch_features(new))
    assert 0 < model.rows_added_ < coreset_size(new_patches, 0.1)  # fewer than a fresh coreset of the new images
    assert model.n_train_images_ == len(old) + len(new) and len(model.nominal_scores_) == len(old) + len(new)

    labels = [0] * len(held) + [1] * len(defects)
    updated = roc_auc_score(labels, model.score_samples(held + defects))
    refit = roc_auc_score(labels, PatchCore(image_size=CROP, coreset_ratio=0.1).fit(old + new).score_samples(held + defects))
    assert updated >= refit - 0.05  # within 5 AUROC points of a full refit on the union (measured: equal)


@pytest.mark.slow
def test_update_versions_and_rollback_restore_identical_scores(line, tmp_path: Path) -> None:
    old, new, held, _ = line
    folder = tmp_path / "new"
    folder.mkdir()
    for i, crop in enumerate(new):
        Image.fromarray(crop).save(folder / f"{i:02d}.png")
    model_dir = PatchCore(image_size=CROP, coreset_ratio=0.1).fit(old).save(tmp_path / "model")
    first_scores = PatchCore.load(model_dir).score_samples(held)

    result = CliRunner().invoke(main, ["update", str(model_dir), str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"added {len(new)} images" in result.output
    listed = list_versions(model_dir)
    assert [(v["version"], v["current"]) for v in listed] == [(2, True), (1, False)]
    assert listed[0]["change"]["action"] == "update" and listed[0]["change"]["images_added"] == len(new)
    assert not np.array_equal(PatchCore.load(model_dir).score_samples(held), first_scores)

    result = CliRunner().invoke(main, ["rollback", str(model_dir), "1"], catch_exceptions=False)
    assert result.exit_code == 0 and "version 3" in result.output
    np.testing.assert_array_equal(PatchCore.load(model_dir).score_samples(held), first_scores)  # bit-identical
    result = CliRunner().invoke(main, ["versions", str(model_dir)])
    assert result.output.splitlines()[0].split()[:2] == ["*", "3"] and "restored_version 1" in result.output
    result = CliRunner().invoke(main, ["rollback", str(model_dir), "9"])
    assert result.exit_code != 0 and "no kept version 9 (kept: 2, 1)" in result.output

    model = PatchCore.load(model_dir)
    for _ in range(3):
        model.save(model_dir, keep_versions=2)  # bounded history
    assert [v["version"] for v in list_versions(model_dir)] == [6, 5, 4]


@pytest.mark.slow
def test_feedback_round_trip_and_update_from_it(line, tmp_path: Path) -> None:
    old, _, held, _ = line
    model_dir = PatchCore(image_size=CROP, coreset_ratio=0.1).fit(old).save(tmp_path / "model")
    client = TestClient(create_app(load_models([str(model_dir)]), api_key="k3y", reload_interval=0))
    image = {"image": ("part.png", png(held[0]), "image/png")}
    assert client.post("/feedback", files=image).status_code == 401
    response = client.post("/feedback", files=image, headers={"X-API-Key": "k3y"})
    assert response.status_code == 200 and response.json()["pending"] == 1
    client.post("/feedback", files={"image": ("b.png", png(held[1]), "image/png")}, headers={"X-API-Key": "k3y"})
    again = client.post("/feedback", files={"image": ("again.png", png(held[0]), "image/png")},
                        headers={"X-API-Key": "k3y"}).json()
    assert again["already_waiting"] and again["pending"] == 2 and again["stored"] == response.json()["stored"]
    bad = client.post("/feedback", files={"image": ("x.png", b"not an image", "image/png")}, headers={"X-API-Key": "k3y"})
    assert bad.status_code == 422 and "x.png: not a readable image" in bad.json()["error"]
    listed = client.get("/feedback", headers={"X-API-Key": "k3y"}).json()["images"]
    assert len(listed) == 2 and all(entry["name"].endswith(".png") for entry in listed)
    (model_dir / "feedback" / "copied by hand.png").write_bytes(png(held[1]))  # the same content, another name

    result = CliRunner().invoke(main, ["update", str(model_dir), "--from-feedback"], catch_exceptions=False)
    assert result.exit_code == 0 and "added 2 images (2 from feedback)" in result.output, result.output
    assert list((model_dir / "feedback").iterdir()) == []  # applied, and recorded in the version
    assert len(list_versions(model_dir)[0]["change"]["from_feedback"]) == 2


@pytest.mark.slow
def test_hot_reload_switches_versions_under_load_and_refuses_a_corrupt_one(line, tmp_path: Path) -> None:
    old, new, held, _ = line
    model = PatchCore(image_size=CROP, coreset_ratio=0.1).fit(old)
    model_dir = model.save(tmp_path / "model")
    served = load_models([str(model_dir)])
    failures, versions, stop = [], set(), threading.Event()
    with TestClient(create_app(served, reload_interval=0.1)) as http:  # `with`: the app's watcher runs

        def client_loop() -> None:
            while not stop.is_set():
                response = http.post("/predict?overlay=false", files={"image": ("p.png", png(held[0]), "image/png")})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.add(response.json()["model_version"])

        clients = [threading.Thread(target=client_loop) for _ in range(3)]
        for client in clients:
            client.start()
        model.partial_fit(new)
        model.save(model_dir)  # version 2 appears while requests run
        deadline = time.monotonic() + 60
        while served["model"].version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        # A corrupt version 3 (its bank no longer matches its checksum), put in place whole.
        staged = tmp_path / "staged"
        shutil.copytree(model_dir, staged)
        model.save(staged)
        bank = staged / "memory_bank.npy"
        bank.write_bytes(bank.read_bytes()[:-8] + b"\0" * 8)
        model_dir.rename(tmp_path / "retired")
        staged.rename(model_dir)
        time.sleep(1.0)
        stop.set()
        for client in clients:
            client.join()
        assert http.get("/model").json()["version"] == 2
        assert http.get("/health").json()["model_versions"] == {"model": 2}
    assert failures == [] and versions == {1, 2}
    assert served["model"].refused_version == 3


@pytest.fixture(scope="module")
def drift_case(brick):
    """48 px brick crops on a grid: a model on half of them, the other half as held-out good images, and
    the same held-out images darkened to 60 % (a lamp failing)."""
    crops = {(i, j): brick[51 * i : 51 * i + 48, 51 * j : 51 * j + 48] for i in range(10) for j in range(10)}
    train = [c for (i, j), c in crops.items() if (i + j) % 2 == 0]
    held = [c for (i, j), c in crops.items() if (i + j) % 2 == 1]
    dark = [np.asarray(ImageEnhance.Brightness(Image.fromarray(c)).enhance(0.6)) for c in held]
    return PatchCore(image_size=48, coreset_ratio=0.1).fit(train), held, dark


def test_drift_warns_on_a_shifted_batch_and_not_on_held_out_good_images(drift_case) -> None:
    model, held, dark = drift_case
    threshold = model.decision_threshold().value
    calm = drift_report(model.nominal_scores_, model.score_samples(held), threshold, model.false_alarm_rate)
    shifted = drift_report(model.nominal_scores_, model.score_samples(dark), threshold, model.false_alarm_rate)
    assert not calm.warning, calm.reason
    assert shifted.warning and shifted.share_above_threshold > 0.5 and shifted.psi > 1.0
    assert shifted.rules_fired == ("false alarms beyond chance", "score distribution moved up")
    assert shifted.median_shift > 0.2 and abs(calm.median_shift) < 0.1
    few = drift_report(model.nominal_scores_, model.score_samples(dark[:10]), threshold, model.false_alarm_rate)
    assert not few.warning and "too few" in few.reason


@pytest.mark.slow
def test_monitor_command_and_service_metrics_report_the_drift(drift_case, tmp_path: Path) -> None:
    model, held, dark = drift_case
    model_dir = model.save(tmp_path / "model")
    for name, images in (("held", held), ("dark", dark)):
        (tmp_path / name).mkdir()
        for i, crop in enumerate(images):
            Image.fromarray(crop).save(tmp_path / name / f"{i:02d}.png")
    calm = CliRunner().invoke(main, ["monitor", str(model_dir), str(tmp_path / "held")])
    assert calm.exit_code == 0 and "ok: " in calm.output, calm.output
    drifted = CliRunner().invoke(main, ["monitor", str(model_dir), str(tmp_path / "dark")])
    assert drifted.exit_code == 1 and "DRIFT: " in drifted.output
    assert "rules fired: false alarms beyond chance, score distribution moved up" in drifted.output
    assert "median score +" in drifted.output

    client = TestClient(create_app(load_models([str(model_dir)]), reload_interval=0))
    for i, crop in enumerate(dark):
        assert client.post("/predict?overlay=false", files={"image": (f"{i}.png", png(crop), "image/png")}).status_code == 200
    client.post("/predict", files={"image": ("bad.png", b"nope", "image/png")})
    health = client.get("/health").json()
    assert "model" in health["drift_warnings"] and "above the threshold" in health["drift_warnings"]["model"]
    families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["patchcore_requests"].samples
                if s.name == "patchcore_requests_total"}
    assert requests[("/predict", "200")] == len(dark) and requests[("/predict", "422")] == 1
    decisions = {s.labels["decision"]: s.value for s in families["patchcore_decisions"].samples
                 if s.name == "patchcore_decisions_total"}
    assert decisions["defect"] > len(dark) / 2
    warning = [s.value for s in families["patchcore_drift_warning"].samples]
    assert warning == [1.0]
    assert "patchcore_request_seconds" in families and "patchcore_normalised_score" in families
