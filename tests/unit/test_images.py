from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.errors import DatasetError, ImageLoadError
from patchcore.io.images import list_images, load_image


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
    assert deep.max() == 254 and deep.min() == 0  # 65280 of 65535: scaled by the bit depth, not clipped


def test_high_bit_depth_images_scale_by_their_depth_never_their_own_maximum(tmp_path: Path) -> None:
    cell = np.full((16, 16), 2000, dtype=np.uint16)  # a 12-bit camera's mid-grey, stored in 16 bits
    saturated = cell.copy()
    saturated[0, 0] = 4095  # one saturated pixel
    Image.fromarray(cell).save(tmp_path / "cell.png")
    Image.fromarray(saturated).save(tmp_path / "saturated.png")
    for depth, grey in ((None, round(2000 * 255 / 65535)), (12, round(2000 * 255 / 4095))):
        plain = np.asarray(load_image(tmp_path / "cell.png", bit_depth=depth))[..., 0]
        bright = np.asarray(load_image(tmp_path / "saturated.png", bit_depth=depth))[..., 0]
        assert (plain == grey).all() and (bright[1:] == grey).all()  # the rest of the image is unchanged
    with pytest.raises(ImageLoadError, match="saturated.png: pixel value 4095 exceeds the 10-bit range"):
        load_image(tmp_path / "saturated.png", bit_depth=10)


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
