from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.data.categories import discover_categories, load_category, load_mask
from patchcore.errors import DatasetError


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def mvtec_root(tmp_path: Path) -> Path:
    image = np.zeros((16, 16), dtype=np.uint8)
    write(tmp_path / "bottle" / "train" / "good" / "000.png", image)
    write(tmp_path / "bottle" / "test" / "good" / "000.png", image)
    write(tmp_path / "bottle" / "test" / "broken" / "000.png", image)
    write(tmp_path / "bottle" / "ground_truth" / "broken" / "000_mask.png", image)
    return tmp_path


def test_loads_mvtec_layout(mvtec_root: Path) -> None:
    category = load_category(mvtec_root, "bottle")
    assert len(category.train_images) == 1 and category.has_masks
    kinds = {(s.defect_type, s.mask is not None, s.is_anomalous) for s in category.test_samples}
    assert kinds == {("good", False, False), ("broken", True, True)}
    assert discover_categories(mvtec_root) == ["bottle"]


def test_missing_mask_names_the_image_and_the_mask(mvtec_root: Path) -> None:
    (mvtec_root / "bottle" / "ground_truth" / "broken" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"broken/000.png: its ground-truth mask .*000_mask.png is missing"):
        load_category(mvtec_root, "bottle")


def test_without_ground_truth_folder_the_category_is_image_level(mvtec_root: Path) -> None:
    import shutil

    shutil.rmtree(mvtec_root / "bottle" / "ground_truth")
    assert not load_category(mvtec_root, "bottle").has_masks


def test_mask_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    write(tmp_path / "m.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match="m.png: mask is 8x8, its image is 16x16"):
        load_mask(tmp_path / "m.png", (16, 16))


def test_unreadable_mask_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="m.png: unreadable mask"):
        load_mask(tmp_path / "m.png", (16, 16))


def test_missing_category_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cable: category folder not found"):
        load_category(tmp_path, "cable")
    with pytest.raises(DatasetError, match="no categories"):
        discover_categories(tmp_path)
