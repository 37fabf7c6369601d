"""The same category written in VisA's and MVTec AD 2's layouts gives the same numbers as in MVTec AD's, and an
MVTec AD 2 submission is written and checked as its evaluation server reads it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore import PatchCore
from patchcore.data.categories import load_category
from patchcore.data.convert import write_layout, write_mvtec_ad2
from patchcore.data.layouts import load_dataset
from patchcore.data.submission import check_submission, write_submission_maps
from patchcore.errors import DatasetError
from patchcore.evaluation.evaluate import evaluate_category

TIMING = ("fit_seconds", "seconds_per_image", "peak_memory_mb")


def make_model() -> PatchCore:
    return PatchCore(coreset_ratio=0.25)


@pytest.mark.slow
def test_visa_and_mvtec_ad2_copies_give_the_mvtec_numbers(tiny_root: Path, tmp_path: Path) -> None:
    original = load_category(tiny_root, "brick")
    expected = {k: v for k, v in evaluate_category(original, make_model).row().items() if k not in TIMING}
    assert expected["pro_05"] is not None and expected["segmentation_f1"] is not None
    for layout in ("visa", "mvtec_ad2"):
        write_layout(original, tmp_path / layout, layout)
        [copy] = load_dataset(tmp_path / layout)
        assert copy.layout == layout and copy.train_images != original.train_images
        measured = {k: v for k, v in evaluate_category(copy, make_model).row().items() if k not in TIMING}
        # The one defect type is called "anomaly" in VisA and "bad" in MVTec AD 2: the same AUROC under its name.
        assert list(measured.pop("per_defect_image_auroc").values()) == list(expected["per_defect_image_auroc"].values())
        assert measured == {k: v for k, v in expected.items() if k != "per_defect_image_auroc"}, layout


@pytest.mark.slow
def test_mvtec_ad2_validation_sets_the_threshold_and_a_submission_passes_the_check(tiny_root: Path,
                                                                                   tmp_path: Path) -> None:
    original = load_category(tiny_root, "brick")
    write_mvtec_ad2(original, tmp_path / "ad2", validation_share=0.25)
    [category] = load_dataset(tmp_path / "ad2")
    assert (len(category.train_images), len(category.validation_images)) == (9, 3)
    model = PatchCore(coreset_ratio=0.25).fit(list(category.train_images),
                                              validation=list(category.validation_images))
    assert model.nominal_source_ == "validation images"
    written = write_submission_maps(model, category, tmp_path / "submission")
    assert written == 2 * len(original.test_samples)
    assert "ready to upload: 16 float16 maps and 16 thresholded PNGs for 1 object" in check_submission(tmp_path / "submission", tmp_path / "ad2")
    # Without the dataset, the checker expects the official objects and file counts.
    with pytest.raises(DatasetError, match=r"anomaly_images: missing object folders: can, fabric, fruit_jelly"):
        check_submission(tmp_path / "submission")
    # A map of the wrong type or size, a mask with grey values, a missing or a stray file: each named.
    maps = tmp_path / "submission" / "anomaly_images" / "brick" / "test_private"
    import tifffile

    tifffile.imwrite(maps / "000_regular.tiff", np.zeros((128, 128), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"000_regular.tiff: the map is float32, the server reads float16"):
        check_submission(tmp_path / "submission", tmp_path / "ad2")
    tifffile.imwrite(maps / "000_regular.tiff", np.zeros((64, 128), dtype=np.float16))
    with pytest.raises(DatasetError, match=r"000_regular.tiff: 128 x 64, its test image is 128 x 128"):
        check_submission(tmp_path / "submission", tmp_path / "ad2")
    tifffile.imwrite(maps / "000_regular.tiff", np.zeros((128, 128), dtype=np.float16))
    masks = tmp_path / "submission" / "anomaly_images_thresholded" / "brick" / "test_private_mixed"
    Image.fromarray(np.full((128, 128), 7, dtype=np.uint8)).save(masks / "001_mixed.png")
    with pytest.raises(DatasetError, match=r"001_mixed.png: values other than 0 and 255"):
        check_submission(tmp_path / "submission", tmp_path / "ad2")
    (masks / "001_mixed.png").rename(masks / "extra.png")
    with pytest.raises(DatasetError, match=r"test_private_mixed: missing files: 001_mixed.png"):
        check_submission(tmp_path / "submission", tmp_path / "ad2")
