from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.errors import DatasetError, ImageLoadError
from patchcore.io.images import Preprocessor, list_images, load_image


def test_modes_become_rgb(tmp_path: Path) -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    Image.fromarray((gray.astype(np.uint16) * 256)).save(tmp_path / "deep.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)])).save(tmp_path / "rgba.png")
    for name in ("gray.png", "palette.png", "deep.png", "rgba.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (16, 16), name
    deep = np.asarray(load_image(tmp_path / "deep.png"))
    assert deep.max() == 255 and deep.min() == 0  # 16-bit scaled, not clipped


def test_arrays_of_each_layout() -> None:
    assert load_image(np.zeros((5, 6), dtype=np.uint8)).size == (6, 5)
    assert load_image(np.zeros((5, 6, 1), dtype=np.float32)).mode == "RGB"
    assert np.asarray(load_image(np.ones((5, 6, 3)))).max() == 255
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((5, 6, 2), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((4, 4), np.nan))


def test_non_image_file_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png: not a readable image"):
        load_image(path)


def test_truncated_png_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no image files"):
        list_images(tmp_path)


def test_map_back_to_original_size_keeps_the_crop_region_aligned() -> None:
    pre = Preprocessor(256, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    crop_map = np.zeros((224, 224), dtype=np.float32)
    crop_map[:, 112:] = 1.0  # right half of the crop
    original = pre.to_original_size(crop_map, (512, 256))  # (W, H)
    assert original.shape == (256, 512)
    assert original[:, :240].max() < 0.05 and original[:, 272:].min() > 0.95
