"""Contaminated good folders: training images unlike the others are named, never set the threshold, and with
exclude_suspicious leave the model."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore import PatchCore
from patchcore.data.offline import texture_photo
from tests.helpers import paste_defect

HEIGHT, WIDTH = 160, 224


def _folder(root: Path) -> tuple[Path, list[np.ndarray]]:
    """24 good gravel crops and, as files 07 and 19 (in different cross-fit folds), two with a pasted defect."""
    gravel, brick = texture_photo("gravel"), texture_photo("brick")
    good = [gravel[y : y + HEIGHT, x : x + WIDTH] for y in range(0, 250, 50) for x in range(0, 288, 48)][:24]
    defective = [paste_defect(gravel[340 : 340 + HEIGHT, x : x + WIDTH], 50, 80, 48, brick[100 + x :, 100:])
                 for x in (0, 200)]
    images = good[:7] + defective[:1] + good[7:18] + defective[1:] + good[18:]
    folder = root / "good"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder, defective


@pytest.mark.slow
def test_defective_images_in_the_good_folder_are_named_and_left_out_on_request(tmp_path: Path) -> None:
    folder, defective = _folder(tmp_path)
    model = PatchCore(coreset_ratio=0.1).fit(folder)
    assert [Path(name).name for name in model.suspicious_training_images_] == ["07.png", "19.png"]
    assert model.excluded_images_ == [] and model.n_train_images_ == 26
    threshold = model.decision_threshold().value
    assert threshold < np.sort(model.nominal_scores_)[-2]  # the two outliers do not set it
    # In the bank, their own rows make them look good.
    assert (model.score_samples(defective) < threshold).all()

    cleaned = PatchCore(coreset_ratio=0.1, exclude_suspicious=True).fit(folder)
    assert [Path(name).name for name in cleaned.excluded_images_] == ["07.png", "19.png"]
    assert cleaned.n_train_images_ == 24 and len(cleaned.nominal_scores_) == 24
    assert cleaned.suspicious_training_images_[:2] == cleaned.excluded_images_
    # Out of the bank, they are defects again.
    assert (cleaned.score_samples(defective) > cleaned.decision_threshold().value).all()
    saved = cleaned.save(tmp_path / "model")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert [Path(name).name for name in manifest["suspicious_training_images"][:2]] == ["07.png", "19.png"]
    assert manifest["nominal"]["threshold"]["method"].startswith(("tail fit", "highest"))
    loaded = PatchCore.load(saved)
    assert loaded.excluded_images_ == cleaned.excluded_images_
    np.testing.assert_allclose(loaded.decision_threshold().value, cleaned.decision_threshold().value)
