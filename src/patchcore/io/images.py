"""Reading images from paths, PIL images or arrays, and the resize/crop/normalise preprocessing."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from patchcore.errors import DatasetError, ImageLoadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

ImageInput = str | Path | Image.Image | np.ndarray


def load_image(source: ImageInput) -> Image.Image:
    """Return `source` as an RGB PIL image; grayscale, palette, RGBA, CMYK and 16-bit all become RGB."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file")
    return _decode(path, str(path))


def decode_image(data: bytes, name: str) -> Image.Image:
    """An uploaded file's bytes as an RGB PIL image, as `load_image` reads files; `name` labels errors."""
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name)


def _decode(file: Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except UnidentifiedImageError as error:  # its message repeats the file object, not worth showing
        raise ImageLoadError(f"{name}: not a readable image (no known image format)") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"{name}: not a readable image ({error})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Scale 16/32-bit to 8 bit by the file's own range; Pillow's convert would clip at 255.
        return array_to_image(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8, uint16 or floats in [0, 1] as RGB."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"array of shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageLoadError(f"array of shape {array.shape}: image is empty")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            raise ImageLoadError(f"array of shape {array.shape}: negative pixel values")
        peak = max(int(array.max()), 1)
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


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def collect_images(inputs: ImageInput | Sequence[ImageInput], training: bool = False) -> list[ImageInput]:
    """The one way the library, CLI, service and Ray turn what a user gives into a list of images.

    Files stay as given; a folder becomes its images, recursively, in a stable order; PIL images and
    arrays stay as they are. A category folder in MVTec AD layout (it holds `train/good`) gives its
    `train/good` images when `training` (fit), else its `test` images (predict): predicting never
    scores the training set by accident.
    """
    if isinstance(inputs, (str, Path, Image.Image, np.ndarray)):
        inputs = [inputs]
    items: list[ImageInput] = []
    for item in inputs:
        if not isinstance(item, (str, Path)):
            items.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            if is_mvtec_category(path):
                path = path / "train" / "good" if training else path / "test"
                if not path.is_dir():
                    raise DatasetError(f"{path.parent}: an MVTec-style category without test/: predict its "
                                       "images by naming their folder or files")
            items += list_images(path)
        elif path.is_file():
            items.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder")
    if not items:
        raise DatasetError("no images given")
    return items


@dataclass(frozen=True)
class Preprocessor:
    """Resize to `resize` x `resize`, centre-crop `crop_size`, normalise; and map results back."""

    resize: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.crop_size > self.resize:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize {self.resize}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.resize, self.resize), Image.BILINEAR)
        offset = self.crop_offset
        cropped = resized.crop((offset, offset, offset + self.crop_size, offset + self.crop_size))
        pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    @property
    def crop_offset(self) -> int:
        return (self.resize - self.crop_size) // 2

    def to_original_size(self, crop_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Place a crop-sized map into the resized frame (edge values fill the cut border), resize to (W, H)."""
        offset = self.crop_offset
        after = self.resize - self.crop_size - offset
        framed = np.pad(crop_map, ((offset, after), (offset, after)), mode="edge")
        tensor = torch.from_numpy(np.ascontiguousarray(framed, dtype=np.float32))[None, None]
        width, height = size
        resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
        return resized[0, 0].numpy()
