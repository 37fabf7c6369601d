"""How an image becomes network input and how patch scores map back: working resolution, tiles, crop preset.

The default looks at the whole image with its aspect ratio kept, at a working resolution chosen from
the training images (`choose_working_side`); images larger than a tile are cut into overlapping
tiles, each contributing the patches of its core so the tiles partition the image's patch grid. The
paper's MVTec protocol (square resize, centre crop) is the explicit `center_crop` option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from patchcore.core.scoring import anomaly_maps, map_operator

# Working sizes are multiples of this (the coarsest default tap's stride), so every patch of every
# tapped level covers whole pixels and the levels' grids align exactly.
SIZE_MULTIPLE = 16
# Below this many pixels on its longer side an image is enlarged: the stride-16 level would have too few cells.
MIN_WORKING_SIDE = 64
# The auto rule keeps training images at their native resolution from this longer side up to this many
# pixels: smaller ones are enlarged (the 128 px texture crops gained 1.4-9 image-AUROC points at 256 px),
# larger ones shrunk (then tiled); halving the 2000 px panels cost 17 points (docs/results.md). The limit
# is an area, not a side, so a line-scan strip keeps its resolution across (docs/results.md).
MIN_AUTO_SIDE = 256
MAX_AUTO_PIXELS = 2048 * 2048
# Training images whose longer sides differ by more than this factor are warned about: one working size cannot
# suit both ends (100 px and 3000 px cells at 1552 px: the small ones enlarged 15x, and their defects missed).
SIZE_SPREAD_WARNING = 2.0
# Context the network sees beyond the patches a tile keeps (each side, working pixels): the tiles
# overlap by twice this, so no kept patch is computed near a tile's cut edge.
TILE_MARGIN = 64


def parse_image_size(text: str) -> int | tuple[int, int]:
    """'1024' (longer side, aspect kept) or '1280x960' (exact width x height)."""
    width, separator, height = text.lower().partition("x")
    try:
        if separator:
            size = (int(width), int(height))
            if min(size) < 1:
                raise ValueError
            return size
        side = int(text)
        if side < 1:
            raise ValueError
        return side
    except ValueError:
        raise ValueError(f"{text!r}: give the longer side in pixels (e.g. 1024) or WIDTHxHEIGHT (e.g. 1280x960)") from None


def choose_working_side(sizes: Sequence[tuple[int, int]]) -> int:
    """The auto rule: the training images' median longer side, at least MIN_AUTO_SIDE, and at most the
    longer side at which an image of their median aspect ratio holds MAX_AUTO_PIXELS (native resolution
    for all but very small or very large images; tiles cover the large)."""
    longest = int(np.median([max(size) for size in sizes]))
    aspect = float(np.median([max(size) / max(min(size), 1) for size in sizes]))
    largest = int(math.sqrt(MAX_AUTO_PIXELS * aspect))
    return max(MIN_AUTO_SIDE, min(longest, largest))


def _round_size(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


@dataclass(frozen=True)
class Tile:
    """A window of the working image (pixels) and which of its patches it contributes (the core).

    `core` is (row0, row1, col0, col1) in the tile's own patch grid; `place` is where that core's
    top-left patch sits in the image's patch grid.
    """

    x: int
    y: int
    width: int
    height: int
    core: tuple[int, int, int, int]
    place: tuple[int, int]


def _spans(length: int, tile: int, margin: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """(start, size, keep_from, keep_to) of equal tiles of at most `tile` covering [0, length), their cores
    partitioning it, each core with `margin` of context inside its tile where there is image beyond it.

    The tiles are as small as that allows (multiples of `multiple`), not `tile` wide: a 1232 px side becomes two
    680 px tiles (1.10x its pixels), not two of 1024 (1.66x).
    """
    if length <= tile:
        return [(0, length, 0, length)]
    count = math.ceil((length - 2 * margin) / (tile - 2 * margin))
    size = min(tile, math.ceil((length + 2 * margin * (count - 1)) / count / multiple) * multiple)
    spans: list[tuple[int, int, int, int]] = []
    for index in range(count):
        start = min(index * (size - 2 * margin), length - size)
        keep_from = 0 if index == 0 else spans[-1][3]
        keep_to = length if index == count - 1 else start + size - margin
        spans.append((start, size, keep_from, keep_to))
    return spans


@lru_cache(maxsize=16)
def _channel_values(values: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) per-channel constants on `device`, made once: a fresh copy to a GPU per batch waits for it."""
    return torch.tensor(values, device=device).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Preprocessor:
    """Original image -> normalised working image (and its tiles); patch-score grid -> map on the original.

    `image_size`: the working resolution, an int for the longer side (aspect kept) or (width, height)
    exactly. `center_crop`: the paper's protocol, keep only the central crop of that many pixels of the
    working image (the rest of the image is not inspected: its map is NaN). `tile_size`: the largest
    window the network sees at once (None: always the whole image).
    """

    image_size: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    center_crop: int | None = None
    tile_size: int | None = None
    stride: int = 8
    size_multiple: int = SIZE_MULTIPLE  # the backbone's: 16 for the CNNs, the patch size for a ViT

    @property
    def multiple(self) -> int:
        """Working sizes and tile sizes are multiples of this: whole patches at every tapped level."""
        return math.lcm(self.size_multiple, self.stride)

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the image of (width, height) `size` is resized to, before any crop."""
        if isinstance(self.image_size, tuple):
            return _round_size(self.image_size[0], self.multiple), _round_size(self.image_size[1], self.multiple)
        scale = max(self.image_size, MIN_WORKING_SIDE) / max(size)
        return _round_size(size[0] * scale, self.multiple), _round_size(size[1] * scale, self.multiple)

    def network_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of what the network sees: the working image, or its centre crop."""
        if self.center_crop is None:
            return self.working_size(size)
        return self.center_crop, self.center_crop

    def _crop_box(self, working: tuple[int, int]) -> tuple[int, int, int, int] | None:
        if self.center_crop is None:
            return None
        if self.center_crop > min(working):
            raise ValueError(f"center_crop {self.center_crop} is larger than the working image {working[0]}x{working[1]}")
        left, top = (working[0] - self.center_crop) // 2, (working[1] - self.center_crop) // 2
        return left, top, left + self.center_crop, top + self.center_crop

    def inspected_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the original image that the network sees, in original pixels."""
        working = self.working_size(size)
        box = self._crop_box(working)
        if box is None:
            return 0, 0, size[0], size[1]
        scale_x, scale_y = size[0] / working[0], size[1] / working[1]
        return (round(box[0] * scale_x), round(box[1] * scale_y), round(box[2] * scale_x), round(box[3] * scale_y))

    def describe(self, size: tuple[int, int]) -> str:
        """What the network sees of an image of (width, height) `size`: the working size, the scale from the
        original (native, enlarged, shrunk or squashed), the crop and the tiles."""
        working, network = self.working_size(size), self.network_size(size)
        across, down = working[0] / size[0], working[1] / size[1]
        if max(across, down) > 1.02 * min(across, down):  # an exact WIDTHxHEIGHT (e.g. the paper preset) squashes
            how = f"squashed: {across:.2f}x across, {down:.2f}x down"
        elif abs(across - 1) < 0.02:
            how = "native"
        else:
            how = f"{'enlarged' if across > 1 else 'shrunk'} {max(across, 1 / across):.2f}x"
        crop = f", centre {network[0]} x {network[1]} kept" if self.center_crop else ""
        tiles = len(self.tiles(network))
        return (f"inspects {size[0]} x {size[1]} images at {working[0]} x {working[1]} px ({how}{crop}), "
                f"{tiles} tile{'s' if tiles > 1 else ''} each")

    def size_spread_warning(self, sizes: Sequence[tuple[int, int]]) -> str | None:
        """A warning when the (width, height) `sizes` of the training images spread more than
        SIZE_SPREAD_WARNING times on their longer side, saying what the working size does to each end."""
        smallest, largest = min(sizes, key=max), max(sizes, key=max)
        if max(largest) <= SIZE_SPREAD_WARNING * max(smallest):
            return None

        def scale(size: tuple[int, int]) -> str:
            factor = max(self.working_size(size)) / max(size)
            return "native" if abs(factor - 1) < 0.02 else f"{'enlarged' if factor > 1 else 'shrunk'} " \
                                                            f"{max(factor, 1 / factor):.1f}x"

        return (f"the training images range from {smallest[0]} x {smallest[1]} ({scale(smallest)}) to {largest[0]} x "
                f"{largest[1]} px ({scale(largest)}), {max(largest) / max(smallest):.0f}x apart: one working size "
                "cannot suit both, and defects of the resized images are missed. Fit one model per image size, or "
                "set the working size yourself (--image-size, image_size=)")

    def network_pixels(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8 of what the network sees: the working image, or its centre crop."""
        working = self.working_size(image.size)
        resized = image.resize(working, Image.BILINEAR) if image.size != working else image
        box = self._crop_box(working)
        return np.asarray(resized.crop(box) if box else resized)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float batch, channels-last, of (B, h, w, 3) uint8 pixels on any device, normalised with
        the backbone's mean and std. Taking uint8 lets a GPU receive a quarter of the bytes and do the arithmetic."""
        batch = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        mean, std = _channel_values(tuple(self.mean), batch.device), _channel_values(tuple(self.std), batch.device)
        return batch.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) normalised tensor of what the network sees, whole."""
        return self.normalise(torch.from_numpy(np.array(self.network_pixels(image)))[None])[0]

    def tiles(self, network_size: tuple[int, int]) -> list[Tile]:
        """Overlapping windows whose cores partition the patch grid of the network input: the whole input when it
        holds no more pixels than a tile_size square, else equal tiles of at most tile_size, as small as the
        context margin allows."""
        width, height = network_size
        tile = max(width, height) if self.tile_size is None else _round_size(self.tile_size, self.multiple)
        if width * height <= tile * tile:  # memory is bounded by the pixels a pass sees, whatever the shape
            tile = max(width, height)
        margin = min(TILE_MARGIN, (tile - self.multiple) // 2) // self.multiple * self.multiple
        s = self.stride
        tiles = []
        for y, tile_height, keep_top, keep_bottom in _spans(height, tile, margin, self.multiple):
            for x, tile_width, keep_left, keep_right in _spans(width, tile, margin, self.multiple):
                tiles.append(Tile(
                    x, y, tile_width, tile_height,
                    core=((keep_top - y) // s, (keep_bottom - y) // s, (keep_left - x) // s, (keep_right - x) // s),
                    place=(keep_top // s, keep_left // s),
                ))
        return tiles

    def grid_size(self, network_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of the image's patch grid."""
        return network_size[1] // self.stride, network_size[0] // self.stride

    def _cell_size(self, size: tuple[int, int]) -> tuple[float, float, int, int]:
        """(cell width, cell height) in original pixels of an image of (W, H) `size`, and the inspected box's
        left and top."""
        left, top, right, bottom = self.inspected_box(size)
        rows, columns = self.grid_size(self.network_size(size))
        return (right - left) / columns, (bottom - top) / rows, left, top

    def cell_centres(self, size: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(x of each column's centre, y of each row's centre) of the patch grid of (rows, columns) `grid`, in
        the original pixels of an image of (W, H) `size`."""
        width, height, left, top = self._cell_size(size)
        return left + (np.arange(grid[1]) + 0.5) * width, top + (np.arange(grid[0]) + 0.5) * height

    def cell_box(self, size: tuple[int, int], row: int, column: int, reach: int = 0) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in original pixels of grid cell (`row`, `column`) of an image of (W, H) `size`, and
        `reach` cells each side (within the inspected box)."""
        width, height, left, top = self._cell_size(size)
        _, _, right, bottom = self.inspected_box(size)
        return (max(left, round(left + (column - reach) * width)), max(top, round(top + (row - reach) * height)),
                min(right, round(left + (column + 1 + reach) * width)),
                min(bottom, round(top + (row + 1 + reach) * height)))

    def region_grid(self, mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A region-of-interest mask (any size, True = inspect) as a boolean patch grid of an image of
        `size`: a patch is inside when at least half of its pixels are."""
        picture = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST).convert("RGB")
        inside = torch.from_numpy(self.network_pixels(picture)[:, :, 0].astype(np.float32) / 255.0)
        pooled = F.avg_pool2d(inside[None, None], self.stride)[0, 0]
        return (pooled >= 0.5).numpy()

    def to_original(self, grids: torch.Tensor, size: tuple[int, int], blur_sigma: float) -> np.ndarray:
        """(B, rows, columns) patch scores of images of (W, H) `size` -> (B, H, W) maps on the originals:
        bilinear upsampling and a Gaussian blur of `blur_sigma` working pixels, in one pass per axis. Pixels
        the network did not see (outside a centre crop) are NaN: never painted with invented values."""
        left, top, right, bottom = self.inspected_box(size)
        network_w, network_h = self.network_size(size)
        rows = map_operator(grids.shape[1], bottom - top, float(blur_sigma) * (bottom - top) / network_h,
                            grids.device)
        columns = map_operator(grids.shape[2], right - left, float(blur_sigma) * (right - left) / network_w,
                               grids.device)
        regions = anomaly_maps(grids.float(), rows, columns).cpu().numpy()  # on the grids' device
        if (left, top, right, bottom) == (0, 0, *size):
            return regions
        full = np.full((len(grids), size[1], size[0]), np.nan, dtype=np.float32)
        full[:, top:bottom, left:right] = regions
        return full
