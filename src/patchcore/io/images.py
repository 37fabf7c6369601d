"""Reading images from paths, PIL images or arrays (any mode, clear errors), and collecting them from folders."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from patchcore.errors import DatasetError, ImageLoadError, ImageTooLargeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

ImageInput = str | Path | Image.Image | np.ndarray


# High-bit-depth images (16-bit files, integer arrays) are scaled by this depth unless told otherwise:
# the same scale for every image, never each image's own maximum.
DEFAULT_BIT_DEPTH = 16


def load_image(source: ImageInput, bit_depth: int | None = None) -> Image.Image:
    """Return `source` as an RGB PIL image; grayscale, palette, RGBA, CMYK and 16-bit all become RGB.

    Pixels of more than 8 bits are scaled by `bit_depth` (default 16: 65535 becomes 255), the same for
    every image, so one saturated pixel never changes how the rest of an image looks.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source, bit_depth)
    if isinstance(source, np.ndarray):
        return array_to_image(source, bit_depth)
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    return _decode(path, str(path), bit_depth)


def decode_image(data: bytes, name: str, bit_depth: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """An uploaded file's bytes as an RGB PIL image, as `load_image` reads files; `name` labels errors.

    With `max_pixels`, a larger image raises `ImageTooLargeError` from its header, before any pixel is decoded.
    """
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    if max_pixels is not None:
        width, height = _header_size(io.BytesIO(data), name)
        if width * height > max_pixels:
            raise ImageTooLargeError(f"{name}: {width} x {height} pixels ({width * height / 1e6:.1f} MP) is more "
                                     f"than the {max_pixels / 1e6:g} MP allowed")
    return _decode(io.BytesIO(data), name, bit_depth)


def read_image_size(source: ImageInput) -> tuple[int, int]:
    """(width, height) of an image as `load_image` would return it, from the file's header only."""
    if isinstance(source, Image.Image):
        return source.size
    if isinstance(source, np.ndarray):
        return source.shape[1], source.shape[0]
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    return _header_size(path, str(path))


def _header_size(file: Path | io.BytesIO, name: str) -> tuple[int, int]:
    try:
        # Reading a header decodes nothing: Pillow's warning about pixels it has not decoded would only land in
        # the logs of a service that is about to refuse the image by its size.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            width, height = image.size
            # Pillow reads a PNG's EXIF by decoding the whole image when the chunk is not before the pixels:
            # a header check must not cost a decode (an 84 MP PNG is 250 MB), and PNGs rarely carry a rotation.
            if image.format == "PNG" and "exif" not in image.info:
                orientation = 1
            else:
                orientation = image.getexif().get(0x0112, 1)  # EXIF orientation: 5-8 turn the image by 90 degrees
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{name}: not a readable image (no known image format)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"{name}: not a readable image ({error})") from error
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _decode(file: Path | io.BytesIO, name: str, bit_depth: int | None = None) -> Image.Image:
    try:
        with Image.open(file) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, bit_depth, name)
    except UnidentifiedImageError as error:  # its message repeats the file object, not worth showing
        raise ImageLoadError(f"{name}: not a readable image (no known image format)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"{name}: not a readable image ({error})") from error


def _to_rgb(image: Image.Image, bit_depth: int | None = None, name: str | None = None) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Scaled by the bit depth to 8 bit; Pillow's convert would clip at 255.
        return array_to_image(np.asarray(image), bit_depth, name)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # An RGB image is returned as it is: a decoded file's is already a copy (exif_transpose's), and a
    # second copy cost as much as a tenth of decoding a 256 x 256 PNG.
    return image if image.mode == "RGB" else image.convert("RGB")


def load_mask_image(source: str | Path | np.ndarray) -> np.ndarray:
    """A mask image (file or array) as a boolean array: True where it is light (above mid-grey)."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise ImageLoadError(f"mask array of shape {source.shape}: expected (H, W)")
        return source.astype(bool) if source.dtype == bool else source > (source.max() / 2 if source.max() else 0)
    picture = load_image(source)
    return np.asarray(picture.convert("L")) > 127


def array_to_image(array: np.ndarray, bit_depth: int | None = None, name: str | None = None) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8, uint16 (scaled by `bit_depth`,
    default 16) or floats in [0, 1] as RGB."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"array of shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(f"array of shape {array.shape}: image is empty")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.integer):
        label = name or f"array of shape {array.shape}"
        if array.min() < 0:
            raise ImageLoadError(f"{label}: negative pixel values")
        depth = bit_depth or DEFAULT_BIT_DEPTH
        peak = 2**depth - 1
        if array.max() > peak:
            raise ImageLoadError(f"{label}: pixel value {int(array.max())} exceeds the {depth}-bit range; "
                                 "give the images' bit depth (--bit-depth)")
        pixels = (array.astype(np.float64) * (255.0 / peak)).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(f"array of shape {array.shape}: contains NaN or infinite values")
        pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        raise ImageLoadError(f"array of shape {array.shape} and dtype {array.dtype}: expected uint8, uint16 or float")
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return _to_rgb(Image.fromarray(pixels, "RGBA"))
    return Image.fromarray(pixels).convert("RGB")


def list_images(folder: str | Path) -> list[Path]:
    """The image files under `folder`, recursively, in a stable order (by relative path); hidden files
    and folders (our own staging files among them) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DatasetError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return files


# Folder names that hold defects or masks in the layouts people have (VisA's Anomaly and Masks, MVTec's
# ground_truth, bad / NG / NOK on lines): images under them are never good training images.
DEFECT_FOLDER_NAMES = frozenset({"anomaly", "anomalies", "abnormal", "bad", "ng", "nok", "defect", "defects",
                                 "defective", "ground_truth", "groundtruth", "mask", "masks"})


def refuse_defect_folders(folder: Path, files: Sequence[Path]) -> None:
    """Fail, naming them, when the images found under `folder` for training include folders named like defects
    or masks, or a `test` folder beside a `train` one: fit would learn them as good, and find nothing."""
    suspects = set()
    for file in files:
        parts = file.relative_to(folder).parts[:-1]
        for depth, part in enumerate(parts):
            beside_train = part.lower() == "test" and (folder.joinpath(*parts[:depth]) / "train").is_dir()
            if part.lower() in DEFECT_FOLDER_NAMES or beside_train:
                suspects.add(str(Path(*parts[: depth + 1])))
                break
    if suspects:
        named = ", ".join(f"{name}/" for name in sorted(suspects)[:5])
        raise DatasetError(f"{folder}: holds images in folders named like defects or masks ({named}): fit learns "
                           "every image it is given as good. Fit on the good images' folder, or list the good "
                           "files themselves")


def _is_tensor(value: object) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def tensor_images(tensor) -> list[np.ndarray]:
    """A torch tensor as images: (H, W), (C, H, W) or (B, C, H, W) with C 1 or 3, on any device; uint8, or
    float in [0, 1] (a normalised tensor, with the backbone's mean and std already applied, is refused)."""
    array = tensor.detach().cpu().numpy()
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ImageLoadError(f"a tensor of shape {tuple(tensor.shape)} is not images: give (H, W), (C, H, W) or "
                             "(B, C, H, W) with 1 or 3 channels")
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageLoadError(f"a float tensor with values from {low:.3g} to {high:.3g}: give pixels in [0, 1] "
                                 "(or uint8), not a normalised tensor")
        array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    images = np.moveaxis(array, 1, -1)
    return [image[..., 0] if image.shape[-1] == 1 else image for image in images]


def collect_images(inputs: ImageInput | Sequence[ImageInput], training: bool = False) -> list[ImageInput]:
    """The one way the library, CLI, service and Ray turn what a user gives into a list of images.

    Files stay as given; a folder becomes its images, recursively, in a stable order; PIL images and arrays stay
    as they are; a torch tensor becomes its images (`tensor_images`). To fit (`training`), a category folder of a
    known dataset layout (MVTec AD, MVTec AD 2, VisA, ...: `patchcore.data.layouts`) gives its good training
    images, and a plain folder holding folders named like defects or masks is refused. To predict, such a category
    folder gives its test images: predicting never scores the training set (or masks) by accident.
    """
    if _is_tensor(inputs):
        inputs = tensor_images(inputs)
    if isinstance(inputs, (str, Path, Image.Image, np.ndarray)):
        inputs = [inputs]
    items: list[ImageInput] = []
    for item in inputs:
        if _is_tensor(item):
            items += tensor_images(item)
            continue
        if not isinstance(item, (str, Path)):
            items.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            items += training_images(path) if training else _images_to_predict(path)
        elif path.is_file():
            items.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    if not items:
        raise DatasetError("no images given")
    return items


def category_validation_images(inputs: object) -> list[Path] | None:
    """The independent good images a dataset category brings when `inputs` is its folder (MVTec AD 2's and LOCO's
    validation/good); None for anything else."""
    if not isinstance(inputs, (str, Path)) or not Path(inputs).is_dir():
        return None
    from patchcore.data.layouts import published_layout

    layout = published_layout(Path(inputs))
    if layout is None or layout.validation_images is None:
        return None
    return layout.validation_images(Path(inputs)) or None


def training_images(folder: Path) -> list[Path]:
    """A folder's good training images: its layout's training split, or every image of a plain folder
    that holds no folder named like defects or masks."""
    # Imported here: the dataset layouts read images with this module.
    from patchcore.data.layouts import training_images as layout_training_images

    files = layout_training_images(folder)
    if files is None:
        files = list_images(folder)
        refuse_defect_folders(folder, files)
    if not files:
        raise DatasetError(f"{folder}: no good training images")
    return files


def _images_to_predict(folder: Path) -> list[Path]:
    from patchcore.data.layouts import test_images

    files = test_images(folder)
    return list_images(folder) if files is None else files
