"""The cross-fit reuses the patches fit extracted: each training image is decoded once, and the nominal scores are
those predict gives each fold against the bank without that fold's rows."""

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import patchcore.io.images as images
from patchcore import PatchCore
from patchcore.apps.cli import main
from patchcore.core.crossfit import fold_bounds, fold_of_images


@pytest.fixture()
def decodes(monkeypatch) -> Counter:
    """File names counted each time an image file is decoded."""
    counted: Counter = Counter()
    decode = images._decode

    def counting(file, *args, **kwargs):
        counted[Path(str(file)).name] += 1
        return decode(file, *args, **kwargs)

    monkeypatch.setattr(images, "_decode", counting)
    return counted


def test_fit_decodes_each_training_image_once(image_folder: Path, decodes: Counter) -> None:
    files = sorted(image_folder.glob("*.png"))
    model = PatchCore(coreset_ratio=0.05, image_size=128).fit(files)
    # Crops 48 px apart do not repeat each other (a 1-pixel shift moves patches further): interleaved folds.
    assert model.nominal_source_ == "cross-fit over 5 interleaved folds of the training images"
    assert model.repeated_images_["checked"] == len(files)  # the repeat check ran, on the same pass
    assert len(model.nominal_scores_) == len(files)
    assert decodes == Counter(file.name for file in files)  # once each: 12 decodes, not 28


def test_fit_with_skip_bad_decodes_each_file_once(image_folder: Path, tmp_path: Path, decodes: Counter) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for file in sorted(image_folder.glob("*.png"))[:8]:
        (folder / file.name).write_bytes(file.read_bytes())
    whole = (folder / "00.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])  # its header reads; its pixels do not
    result = CliRunner().invoke(main, ["fit", str(folder), "--out", str(tmp_path / "model"), "--image-size", "128",
                                       "--coreset-ratio", "0.05", "--skip-bad"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s)" in result.output and "truncated.png" in result.output
    assert "fitted on 8 images" in result.output
    assert decodes == Counter({**{f"{i:02d}.png": 1 for i in range(8)}, "truncated.png": 1})


@pytest.mark.parametrize("assignment", ["contiguous", "interleaved"])
def test_cross_fit_scores_are_what_predict_gives_each_fold_against_the_rest(train_crops, assignment: str) -> None:
    crops = train_crops[:10]
    model = PatchCore(coreset_ratio=0.2, index="exact", image_size=128, threshold_folds=3,
                      fold_assignment=assignment).fit(crops)
    assert model.repeated_images_["folds"] == assignment and model.nominal_source_.startswith(
        f"cross-fit over 3 {assignment} folds")
    folds = fold_of_images(len(crops), 3, interleaved=assignment == "interleaved")
    expected = np.zeros(len(crops))
    for fold in range(3):
        members = np.flatnonzero(folds == fold)
        fold_model = copy.copy(model)
        fold_model.bank_ = model.bank_.without_image_numbers(members).indexed(model._new_index(), model.device_)
        expected[members] = fold_model.score_samples([crops[i] for i in members])
    np.testing.assert_allclose(model.nominal_scores_, expected, rtol=1e-5)
    assert not np.allclose(model.nominal_scores_, model.score_samples(crops))  # against the full bank: lower
