"""The public face: the package-root API, scikit-learn compatibility, one image collector, the generated CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.base import clone

import patchcore
from patchcore import Ensemble, ModelFileError, Padim, PatchCore, Spade, load_model
from patchcore.apps.cli import main
from patchcore.params import declared
from patchcore.search import INDEXES, IVFIndex


def test_the_package_root_exports_the_estimators_and_errors() -> None:
    for name in ("PatchCore", "Spade", "Padim", "Ensemble", "load_model", "Prediction", "PatchCoreError",
                 "ImageLoadError", "DatasetError", "WeightsError", "ModelFileError", "NotFittedError"):
        assert name in dir(patchcore) and getattr(patchcore, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'fit'"):
        patchcore.fit  # noqa: B018


def test_get_params_set_params_and_clone_work_as_in_scikit_learn() -> None:
    model = PatchCore(coreset_ratio=0.05, index=IVFIndex(n_probe=16))
    deep = model.get_params(deep=True)
    assert deep["coreset_ratio"] == 0.05 and deep["index__n_probe"] == 16 and deep["index__rerank_factor"] == 8
    assert "index__n_probe" not in model.get_params(deep=False)
    model.set_params(index__n_probe=4, blur_sigma=2.0)
    assert model.index.n_probe == 4 and model.blur_sigma == 2.0
    copy = clone(model)
    assert copy is not model and copy.index is not model.index
    settings = {name: value for name, value in model.get_params(deep=True).items() if name != "index"}
    assert {name: value for name, value in copy.get_params(deep=True).items() if name != "index"} == settings
    assert repr(copy) == "PatchCore(blur_sigma=2.0, coreset_ratio=0.05, index=IVFIndex(n_probe=4))"
    for other in (Spade(n_nearest_images=3), Padim(covariance_epsilon=0.1), Ensemble([Padim(), Spade()])):
        assert clone(other).get_params(deep=False).keys() == other.get_params(deep=False).keys()
    with pytest.raises(ValueError, match="Invalid parameter 'coreset'"):
        model.set_params(coreset=0.1)


def test_clone_of_a_fitted_model_is_unfitted(fitted_model) -> None:
    copy = clone(fitted_model)
    assert copy.get_params() == fitted_model.get_params()
    assert not hasattr(copy, "memory_bank_")
    with pytest.raises(patchcore.NotFittedError):
        copy.predict(np.zeros((64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def category(tmp_path_factory, train_crops, good_test_crops, defect_crop) -> Path:
    """An MVTec-style category whose train and test images are told apart by their sizes."""
    root = tmp_path_factory.mktemp("mvtec") / "bricks"
    for folder, crops in (("train/good", train_crops[:12]), ("test/good", good_test_crops[:2]),
                          ("test/broken/deep", [defect_crop[0]])):
        (root / folder).mkdir(parents=True)
        for i, crop in enumerate(crops):
            Image.fromarray(crop).save(root / folder / f"{i:03d}.png")
    (root / "ground_truth" / "broken").mkdir(parents=True)
    Image.fromarray(np.zeros((128, 128), dtype=np.uint8)).save(root / "ground_truth" / "broken" / "000_mask.png")
    return root


def test_fit_uses_train_good_and_predict_never_scores_the_training_images(category: Path) -> None:
    model = PatchCore(coreset_ratio=0.05, holdout_fraction=0.0).fit(category)
    assert model.n_train_images_ == 12
    sources = [Path(p.source).relative_to(category).as_posix() for p in model.predict(category)]
    # The category's test images, recursively and in a stable order; no train/ image, no mask.
    assert sources == ["test/broken/deep/000.png", "test/good/000.png", "test/good/001.png"]
    assert [p.source for p in model.predict(category / "test")] == [str(category / s) for s in sources]
    with pytest.raises(patchcore.DatasetError, match="nowhere: no such file or folder"):
        model.predict(category / "nowhere")


def test_every_declared_parameter_is_a_command_line_option() -> None:
    help_text = CliRunner().invoke(main, ["fit", "--help"], terminal_width=200).output
    for method in patchcore.METHODS.values():
        for field in declared(method):
            flag = "--" + field.name.replace("_", "-")
            assert (flag in help_text) == field.metadata["cli"], flag
    for index in INDEXES.values():
        for field in declared(index):
            assert "--index-" + field.name.replace("_", "-") in help_text
    for flag in ("--blur-sigma", "--center-crop", "--tile-size", "--roi-mask", "--bit-depth", "--projection-dim", "--covariance-epsilon", "--index-n-probe"):
        assert flag in help_text


@pytest.mark.slow
def test_index_settings_reach_the_model_from_the_command_line(image_folder: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke(main, ["fit", str(image_folder), "--out", str(tmp_path / "m"), "--index", "ivfflat",
                                    "--index-n-probe", "3", "--coreset-ratio", "0.5", "--holdout-fraction", "0"])
    assert run.exit_code == 0, run.output
    params = json.loads((tmp_path / "m" / "manifest.json").read_text())["params"]
    assert params["index"] == {"kind": "ivfflat", "n_lists": None, "n_probe": 3}
    model = load_model(tmp_path / "m")
    assert model.index_.index_.nprobe == 3 and model.index.n_probe == 3
    refused = CliRunner().invoke(main, ["fit", str(image_folder), "--out", str(tmp_path / "s"), "--method", "spade",
                                        "--index-n-probe", "3"])
    assert refused.exit_code != 0 and "not used by --method spade: --index-n-probe" in refused.output
    unknown = CliRunner().invoke(main, ["fit", str(image_folder), "--out", str(tmp_path / "h"), "--index", "hnsw",
                                        "--index-n-probe", "3"])
    assert unknown.exit_code != 0 and "index 'hnsw' has no setting n_probe" in unknown.output


@pytest.mark.slow
def test_a_saved_ivf_index_is_loaded_as_trained_not_trained_again(train_crops, good_test_crops, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = PatchCore(coreset_ratio=0.25, index="ivf", holdout_fraction=0.0).fit(train_crops[:16])
    assert model.memory_bank_.shape[0] >= 1024  # large enough for k-means cells, not the exact fallback
    before = model.score_samples(good_test_crops)
    saved = model.save(tmp_path / "model")
    assert (saved / "search_index.npy").is_file()

    def no_training(*_):
        raise AssertionError("the saved index was trained again")

    monkeypatch.setattr(IVFIndex, "_build", no_training)
    np.testing.assert_array_equal(PatchCore.load(saved).score_samples(good_test_crops), before)


def test_predict_decodes_each_file_once(fitted_model, image_folder: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    saved = fitted_model.save(tmp_path / "model")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    run = CliRunner().invoke(main, ["predict", str(saved), str(image_folder), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert len(opened) == len(list(image_folder.glob("*.png"))) == len(set(map(str, opened)))


def test_a_manifest_without_its_checksum_is_refused(fitted_model, tmp_path: Path) -> None:
    saved = fitted_model.save(tmp_path / "model")
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["manifest_sha256"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="no manifest_sha256"):
        load_model(saved)


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom patchcore.apps.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: " in output and output.strip().endswith("torch not loaded")


def test_torch_tensors_are_images_like_arrays(fitted_model, good_test_crops, defect_crop) -> None:
    import torch

    from patchcore import ImageLoadError

    crops = np.stack([good_test_crops[0], defect_crop[0]])
    expected = fitted_model.score_samples(list(crops))
    assert crops.ndim == 3  # grey photos: (B, H, W)
    batch = torch.from_numpy(crops)[:, None]  # (B, 1, H, W) uint8
    np.testing.assert_allclose(fitted_model.score_samples(batch), expected, rtol=1e-5)
    np.testing.assert_allclose(fitted_model.score_samples(batch.float() / 255), expected, rtol=1e-4)  # [0, 1]
    assert len(fitted_model.predict(batch[1])) == 1  # one (C, H, W) tensor is one image
    with pytest.raises(ImageLoadError, match="not a normalised tensor"):
        fitted_model.score_samples((batch.float() / 255 - 0.45) / 0.22)


def test_decision_function_is_the_distance_to_the_threshold_positive_for_defects(fitted_model, good_test_crops,
                                                                               defect_crop) -> None:
    calmest = good_test_crops[int(np.argmin(fitted_model.score_samples(good_test_crops)))]
    images = [calmest, defect_crop[0]]
    margins = fitted_model.decision_function(images)
    scores = fitted_model.score_samples(images)
    np.testing.assert_allclose(margins, scores - fitted_model.decision_threshold().value)
    assert margins[1] > max(margins[0], 0)
    assert [p.is_anomalous for p in fitted_model.predict(images)] == [bool(m > 0) for m in margins]
    looser = fitted_model.decision_function(images, false_alarm_rate=0.3)
    assert (looser >= margins).all()


def test_the_overlay_predict_writes_is_one_call_away(fitted_model, defect_crop) -> None:
    from patchcore import overlay_image

    prediction = fitted_model.predict(defect_crop[0])[0]  # one image in: a list of one Prediction
    picture = overlay_image(defect_crop[0], prediction, fitted_model)
    assert picture.size == (128, 128) and picture.mode == "RGB"
    pixels = np.asarray(picture)
    assert ((pixels == (255, 0, 255)).all(axis=-1)).any()  # the defect region outlined
    assert not np.array_equal(pixels, defect_crop[0])  # coloured
