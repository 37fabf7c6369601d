"""The image-loading boundary: odd, broken and hostile files give ImageLoadError naming the file, never a crash."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from patchcore.errors import ImageLoadError
from patchcore.io.images import array_to_image, decode_image, load_image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@given(st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_random_bytes_decode_or_raise_image_load_error(data: bytes) -> None:
    try:
        image = decode_image(data, "fuzz.png")
    except ImageLoadError as error:
        assert str(error).startswith("fuzz.png: ")
    else:
        assert image.mode == "RGB"


PNG = encoded(Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(48, 32, 3)), "PNG")
JPEG = encoded(Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(48, 32, 3)), "JPEG")


@given(st.sampled_from([PNG, JPEG]), st.integers(0, 10_000), st.binary(min_size=1, max_size=16))
@settings(max_examples=200, deadline=None)
def test_corrupted_real_files_decode_or_raise_image_load_error(original: bytes, position: int, junk: bytes) -> None:
    position %= len(original)
    for data in (original[:position], original[:position] + junk + original[position + len(junk):]):
        try:
            image = decode_image(data, "part.jpg")
        except ImageLoadError as error:
            assert "part.jpg" in str(error)
        else:  # junk in the header may change the declared size; what decodes must be a real image
            assert image.mode == "RGB" and min(image.size) >= 1


@given(arrays(dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
              shape=st.tuples(st.integers(0, 6), st.integers(0, 6)).flatmap(
                  lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4), (*hw, 2)]))))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_arrays_become_rgb_or_raise_image_load_error(array: np.ndarray) -> None:
    try:
        image = array_to_image(array)
    except ImageLoadError as error:
        assert "array of shape" in str(error)
    else:
        assert image.mode == "RGB" and image.size == (array.shape[1], array.shape[0])


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: what a decompression bomb looks like at open."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    header = struct.pack(">II", width, height) + bytes(data[24:29])  # IHDR: size, depth, colour, ...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def test_decompression_bomb_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(20000, 20000))  # 400 M pixels: 1.2 GB once decoded
    with pytest.raises(ImageLoadError, match=r"bomb\.png: not a readable image .*decompression bomb"):
        load_image(path)


@pytest.mark.parametrize("mode", ["CMYK", "P", "I;16", "LA", "1"])
def test_other_modes_and_formats_become_rgb(mode: str, tmp_path: Path) -> None:
    image = Image.new(mode, (5, 4))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert decode_image(encoded(image, fmt), f"x.{fmt.lower()}").size == (5, 4)


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    assert decode_image(encoded(image, "JPEG", exif=exif), "photo.jpg").size == (10, 30)


def test_one_pixel_image_and_unusual_paths(tmp_path: Path) -> None:
    folder = tmp_path / "Prüfung läuft" / "zelle 1"
    folder.mkdir(parents=True)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "ein pixel.png")
    assert load_image(folder / "ein pixel.png").getpixel((0, 0)) == (200, 10, 10)
    (folder / "leer.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="leer.png: not a readable image"):
        load_image(folder / "leer.png")


def test_an_unknown_format_says_so_without_internal_object_names() -> None:
    with pytest.raises(ImageLoadError) as caught:
        decode_image(b"hello, not an image", "notes.png")
    assert str(caught.value) == "notes.png: not a readable image (no known image format)"


def test_an_oversized_header_is_refused_without_a_pillow_warning(recwarn) -> None:
    import io

    from PIL import Image

    from patchcore.errors import ImageTooLargeError
    from patchcore.io.images import decode_image

    buffer = io.BytesIO()
    Image.new("L", (12_000, 8_000)).save(buffer, format="PNG")  # 96 MP: past Pillow's warning line, not its error
    with pytest.raises(ImageTooLargeError, match="96.0 MP"):
        decode_image(buffer.getvalue(), "big.png", max_pixels=40_000_000)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_fit_never_learns_a_folder_of_defects_or_masks_as_good(tmp_path: Path) -> None:
    from PIL import Image

    from patchcore import PatchCore
    from patchcore.errors import DatasetError
    from patchcore.io.images import collect_images

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32)).save(path)

    # A plain folder with bad/ and masks/ beside good images is refused, the folders named.
    for name in ("a.png", "bad/b.png", "Masks/b.png"):
        image(tmp_path / "line" / name)
    with pytest.raises(DatasetError, match=r"line: holds images in folders named like defects or masks "
                                           r"\(Masks/, bad/\)"):
        PatchCore().fit(tmp_path / "line")
    # good/ beside bad/ too: fit names bad/ rather than guess which good images are for testing.
    image(tmp_path / "labelled" / "good" / "a.png")
    image(tmp_path / "labelled" / "bad" / "b.png")
    with pytest.raises(DatasetError, match=r"\(bad/\)"):
        collect_images(tmp_path / "labelled", training=True)
    assert len(collect_images(tmp_path / "labelled")) == 2  # to predict, every image is fine
    # A test folder beside a train folder is refused too; listed files are taken as given.
    image(tmp_path / "run" / "train" / "a.png")
    image(tmp_path / "run" / "test" / "b.png")
    with pytest.raises(DatasetError, match=r"\(test/\)"):
        collect_images(tmp_path / "run", training=True)
    assert len(collect_images([tmp_path / "run" / "train" / "a.png", tmp_path / "run" / "test" / "b.png"],
                              training=True)) == 2
