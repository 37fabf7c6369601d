"""Real-data benchmarks built from registry packages, written in MVTec AD layout.

Textures: scikit-image's real 512 x 512 photos, split in space (a 3 x 3 grid of tiles: train crops
inside seven tiles, test crops inside the other two, so none overlaps a train crop), with
*synthetic* defects pasted on the held-out crops.
ELPV: real electroluminescence solar-cell images with real defects, image-level labels only.
High resolution: 2000 x 720 px texture panels with small synthetic defects (`hires_*`), and 1200 x 900 px
ELPV modules of 3 x 4 real cells holding one real defective cell (`elpv_module_TYPE`) or one small synthetic
defect (`elpv_module_TYPE_small`); 3600 x 300 px strips of 1 x 12 cells with one small synthetic defect
(`elpv_strip_TYPE_small`), as a line-scan camera sees a row of cells.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter
from tqdm.auto import tqdm

from patchcore.data.categories import load_mvtec
from patchcore.data.convert import CONVERTIBLE_LAYOUTS, write_layout
from patchcore.errors import DatasetError

TEXTURES = ("brick", "grass", "gravel")
# Foreign material for each texture, chosen to look different from it (gravel in grass looks like grass).
FOREIGN_DONOR = {"brick": "gravel", "grass": "brick", "gravel": "brick"}
ELPV_CATEGORIES = ("elpv_mono", "elpv_poly")
HIRES = tuple(f"hires_{texture}" for texture in TEXTURES)
ELPV_MODULES = ("elpv_module_mono", "elpv_module_poly", "elpv_module_mono_small", "elpv_module_poly_small")
ELPV_STRIPS = ("elpv_strip_mono_small", "elpv_strip_poly_small")
OFFLINE_CATEGORIES = TEXTURES + ELPV_CATEGORIES + HIRES + ELPV_MODULES + ELPV_STRIPS

# The registry package each benchmark is built from: (import name, pip requirement).
SOURCE_PACKAGES = {
    **{texture: ("skimage", "scikit-image>=0.22") for texture in TEXTURES},
    **{elpv: ("elpv_dataset", "elpv-dataset==1.0.0.post1") for elpv in ELPV_CATEGORIES},
    **{hires: ("skimage", "scikit-image>=0.22") for hires in HIRES},
    **{module: ("elpv_dataset", "elpv-dataset==1.0.0.post1") for module in ELPV_MODULES + ELPV_STRIPS},
}

CROP = 128
TILE = 160  # a 3 x 3 grid of 160 px tiles, centred in the 512 px photo
TILE_MARGIN = 16
N_TEST_TILES = 2
TRAIN_STRIDE = 8


def missing_packages(categories: tuple[str, ...]) -> list[str]:
    """pip requirements of the source packages that the chosen categories need and that are not installed."""
    needed = {SOURCE_PACKAGES[c] for c in categories}
    return sorted(req for module, req in needed if importlib.util.find_spec(module) is None)


def install_packages(requirements: list[str]) -> None:
    """Install source packages from the package index into this Python environment."""
    if requirements:
        subprocess.run([sys.executable, "-m", "pip", "install", *requirements], check=True)


def texture_photo(name: str) -> np.ndarray:
    """A scikit-image texture photo as a 2-D uint8 array."""
    try:
        folder = importlib.resources.files("skimage").joinpath("data")
    except ModuleNotFoundError:
        raise DatasetError("the texture benchmarks need scikit-image: pip install 'patchcore[data]'") from None
    with Image.open(Path(str(folder.joinpath(f"{name}.png")))) as image:
        return np.asarray(image.convert("L"))


# -- synthetic defects: each takes (crop, rng, donor texture) and returns (defective crop, mask) ------


def _random_blob(rng: np.random.Generator, size: int, radius: tuple[float, float]) -> np.ndarray:
    """A soft irregular blob in [0, 1], centred away from the border."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    ry, rx = rng.uniform(*radius, size=2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    wobble = gaussian_filter(rng.normal(size=(size, size)), 6) * 8.0
    return np.clip(1.5 - (u**2 + v**2 + wobble) , 0, 1)


def scratch(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = crop.shape[0]
    mask = np.zeros(crop.shape, dtype=bool)
    y, x = rng.uniform(0.2, 0.8, size=2) * size
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 0.6) * size
    for t in np.linspace(0, length, int(length * 2)):
        angle += rng.normal(0, 0.02)
        py, px = int(y + t * np.sin(angle)), int(x + t * np.cos(angle))
        if 0 <= py < size and 0 <= px < size:
            mask[py, px] = True
    mask = binary_dilation(mask, iterations=int(rng.integers(1, 3)))
    out = crop.astype(np.float64)
    out[mask] = 235.0 if rng.random() < 0.5 else 20.0
    return out.clip(0, 255).astype(np.uint8), mask


def foreign_patch(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = crop.shape[0]
    blob = _random_blob(rng, size, (8, 18)) > 0.5
    y, x = rng.integers(0, donor.shape[0] - size), rng.integers(0, donor.shape[1] - size)
    out = crop.copy()
    out[blob] = donor[y : y + size, x : x + size][blob]
    return out, blob


def hole(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blob = _random_blob(rng, crop.shape[0], (5, 12))
    out = crop * (1.0 - 0.9 * blob)
    return out.clip(0, 255).astype(np.uint8), blob > 0.5


def stain(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smudge: texture detail washed out and the tone shifted, fading out at the edge."""
    blob = gaussian_filter(_random_blob(rng, crop.shape[0], (10, 22)), 2)
    smeared = gaussian_filter(crop.astype(np.float64), 3) * rng.uniform(0.6, 0.8)
    out = crop * (1 - blob) + smeared * blob
    return out.clip(0, 255).astype(np.uint8), blob > 0.5


def brightness(crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blob = _random_blob(rng, crop.shape[0], (10, 20))
    gain = rng.choice([0.45, 1.7])
    out = crop * (1 + (gain - 1) * blob)
    return out.clip(0, 255).astype(np.uint8), blob > 0.5


DEFECTS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch,
    "foreign_patch": foreign_patch,
    "hole": hole,
    "stain": stain,
    "brightness": brightness,
}


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def build_texture(name: str, root: Path, seed: int = 0, n_test_good: int = 40, n_per_defect: int = 12) -> dict:
    """Write one texture category; return its description (what is real, what is synthetic)."""
    photo = texture_photo(name)
    donor = texture_photo(FOREIGN_DONOR[name])
    rng = np.random.default_rng(seed)
    category = root / name
    # Tiles spread both sets over the whole photo (its content drifts from top to bottom),
    # while every crop stays inside its tile: no test crop overlaps a train crop.
    tiles = [(TILE_MARGIN + TILE * row, TILE_MARGIN + TILE * col) for row in range(3) for col in range(3)]
    test_tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), N_TEST_TILES, replace=False))]
    train_tiles = [tile for tile in tiles if tile not in test_tiles]
    offsets = range(0, TILE - CROP + 1, TRAIN_STRIDE)
    train_positions = [(ty + dy, tx + dx) for ty, tx in train_tiles for dy in offsets for dx in offsets]
    for i, (y, x) in enumerate(train_positions):
        _save_png(photo[y : y + CROP, x : x + CROP], category / "train" / "good" / f"{i:03d}.png")

    def test_crop() -> np.ndarray:
        tile_y, tile_x = test_tiles[int(rng.integers(len(test_tiles)))]
        y, x = tile_y + int(rng.integers(TILE - CROP + 1)), tile_x + int(rng.integers(TILE - CROP + 1))
        return photo[y : y + CROP, x : x + CROP]

    for i in range(n_test_good):
        _save_png(test_crop(), category / "test" / "good" / f"{i:03d}.png")
    for defect, make in DEFECTS.items():
        for i in range(n_per_defect):
            image, mask = make(test_crop(), rng, donor)
            _save_png(image, category / "test" / defect / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, category / "ground_truth" / defect / f"{i:03d}_mask.png")
    return {
        "source": f"scikit-image data/{name}.png (real photo), defects synthetic",
        "train_images": len(train_positions),
        "test_good": n_test_good,
        "test_defective": n_per_defect * len(DEFECTS),
        "split": f"{TILE} px tiles (y, x) {test_tiles} hold the test crops, the other tiles the train crops: "
        "no overlap",
        "seed": seed,
    }


# The high-resolution panels: REGION_ROWS x REGION_COLUMNS regions of one texture photo at its native
# resolution (2000 x 720 px). The photo is cut into four horizontal bands: train regions come
# from bands 0 and 2, test regions from bands 1 and 3, so no test pixel was ever seen in training and
# both sets span the photo from top to bottom (its content drifts that way).
REGION = (120, 250)  # (height, width) of one region
REGION_ROWS, REGION_COLUMNS = 6, 8
BANDS = 4
SMALL_DEFECT = (8, 24)  # side of a defect's square, pixels at native resolution


def _panel(photo: np.ndarray, rng: np.random.Generator, test: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A mosaic panel and, region by region (row-major), the photo position each region was cut from."""
    height, width = REGION
    panel = np.empty((height * REGION_ROWS, width * REGION_COLUMNS), dtype=np.uint8)
    origins = []
    for row in range(REGION_ROWS):
        for column in range(REGION_COLUMNS):
            band = photo.shape[0] // BANDS
            y = band * (2 * int(rng.integers(BANDS // 2)) + int(test)) + int(rng.integers(band - height + 1))
            x = int(rng.integers(photo.shape[1] - width + 1))
            panel[row * height : (row + 1) * height, column * width : (column + 1) * width] = photo[y : y + height, x : x + width]
            origins.append((y, x))
    return panel, origins


def small_defect(panel: np.ndarray, rng: np.random.Generator, kind: str, donor: np.ndarray,
                 at_border: bool) -> np.ndarray:
    """Paint one defect of `kind` (a key of DEFECTS), 8-24 px across, into `panel` in place; return its mask.
    With `at_border` it touches one of the panel's edges."""
    size = int(rng.integers(SMALL_DEFECT[0], SMALL_DEFECT[1] + 1))
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    angle = rng.uniform(0, np.pi)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "scratch":  # a thin line across the square
        blob = np.abs(v) <= rng.uniform(0.6, 1.2)
    else:
        radii = size / 2 * rng.uniform(0.7, 1.0), size / 2 * rng.uniform(0.4, 0.9)
        blob = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0
    rows, columns = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
    blob = blob[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]  # its tight box, so an edge defect touches the edge
    height, width = panel.shape
    top, left = int(rng.integers(height - blob.shape[0] + 1)), int(rng.integers(width - blob.shape[1] + 1))
    if at_border:
        edge = int(rng.integers(4))
        top = 0 if edge == 0 else height - blob.shape[0] if edge == 1 else top
        left = 0 if edge == 2 else width - blob.shape[1] if edge == 3 else left
    size_y, size_x = blob.shape
    window = panel[top : top + size_y, left : left + size_x].astype(np.float64)
    if kind == "scratch":
        window[blob] = 235.0 if rng.random() < 0.5 else 20.0
    elif kind == "hole":
        window[blob] *= 0.15
    elif kind == "brightness":
        window[blob] *= rng.choice([0.45, 1.8])
    elif kind == "stain":
        window[blob] = gaussian_filter(window, 2)[blob] * 0.65
    else:  # foreign_patch
        y, x = int(rng.integers(donor.shape[0] - size_y)), int(rng.integers(donor.shape[1] - size_x))
        window[blob] = donor[y : y + size_y, x : x + size_x][blob]
    panel[top : top + size_y, left : left + size_x] = window.clip(0, 255).astype(np.uint8)
    mask = np.zeros(panel.shape, dtype=bool)
    mask[top : top + size_y, left : left + size_x] = blob
    return mask


def _write_small_defects(category: Path, rng: np.random.Generator, donor: np.ndarray, n_per_defect: int,
                         good_image: Callable[[str], np.ndarray]) -> int:
    """For each kind of DEFECTS, `n_per_defect` fresh good images (`good_image(relative path)`) with one
    `small_defect` each, every other one touching an edge, written with their masks; returns how many touch one."""
    at_border = 0
    for defect in DEFECTS:
        for i in range(n_per_defect):
            relative = f"test/{defect}/{i:03d}.png"
            image = good_image(relative)
            border = i % 2 == 0
            at_border += border
            mask = small_defect(image, rng, defect, donor, border)
            _save_png(image, category / relative)
            _save_png(mask.astype(np.uint8) * 255, category / "ground_truth" / defect / f"{i:03d}_mask.png")
    return at_border


def build_hires(name: str, root: Path, seed: int = 0, n_train: int = 12, n_test_good: int = 16,
                n_per_defect: int = 6) -> dict:
    """Write a high-resolution panel category (`hires_TEXTURE`): 2000 x 720 px, one small defect per defective image."""
    texture = name.removeprefix("hires_")
    photo, donor = texture_photo(texture), texture_photo(FOREIGN_DONOR[texture])
    rng = np.random.default_rng(seed)
    category = root / name
    regions = {}  # each panel's regions' positions in the photo, to trace a map peak to what the photo shows there

    def write_panel(relative: str, test: bool) -> np.ndarray:
        panel, regions[relative] = _panel(photo, rng, test)
        return panel

    for i in range(n_train):
        relative = f"train/good/{i:03d}.png"
        _save_png(write_panel(relative, test=False), category / relative)
    for i in range(n_test_good):
        relative = f"test/good/{i:03d}.png"
        _save_png(write_panel(relative, test=True), category / relative)
    at_border = _write_small_defects(category, rng, donor, n_per_defect,
                                     lambda relative: write_panel(relative, test=True))
    (category / "regions.json").write_text(json.dumps(
        {"region_size": list(REGION), "grid": [REGION_ROWS, REGION_COLUMNS], "origins": regions}))
    height, width = REGION[0] * REGION_ROWS, REGION[1] * REGION_COLUMNS
    return {
        "source": f"scikit-image data/{texture}.png (real photo) at native resolution, defects synthetic",
        "image_size": [width, height],
        "train_images": n_train,
        "test_good": n_test_good,
        "test_defective": n_per_defect * len(DEFECTS),
        "defects": f"one per image, {SMALL_DEFECT[0]}-{SMALL_DEFECT[1]} px across; {at_border} touch an image edge",
        "split": f"the photo cut into {BANDS} horizontal bands: train regions from bands 0 and 2, test regions "
                 "from bands 1 and 3: no overlap, both spanning the photo",
        "seed": seed,
    }


def elpv_labels() -> tuple[Path, list[tuple[str, float, str]]]:
    try:
        folder = Path(str(importlib.resources.files("elpv_dataset").joinpath("data")))
    except ModuleNotFoundError:
        raise DatasetError("the ELPV benchmarks need the elpv-dataset package: pip install 'patchcore[elpv]'") from None
    rows = []
    with open(folder / "labels.csv", encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], float(parts[1]), parts[2]))
    return folder, rows


def elpv_good_split(cell_type: str, seed: int = 0, train_share: float = 0.75) -> tuple[list[str], list[str]]:
    """The defect-free cells of one type, split (seeded) into train and test cells: one split for cells and modules."""
    _, rows = elpv_labels()
    good = [path for path, prob, kind in rows if kind == cell_type and prob == 0.0]
    order = np.random.default_rng(seed).permutation(len(good))
    n_train = int(round(train_share * len(good)))
    return [good[i] for i in order[:n_train]], [good[i] for i in order[n_train:]]


def elpv_defective(cell_type: str) -> list[str]:
    """The cells of one type labelled defective with probability 1."""
    _, rows = elpv_labels()
    return [path for path, prob, kind in rows if kind == cell_type and prob == 1.0]


def build_elpv(cell_type: str, root: Path, seed: int = 0, train_share: float = 0.75) -> dict:
    """Train on a seeded share of defect-free cells; test held-out good vs. defective (p = 1) cells."""
    folder, _ = elpv_labels()
    train, test_good = elpv_good_split(cell_type, seed, train_share)
    defective = elpv_defective(cell_type)
    category = root / f"elpv_{cell_type}"
    splits = {"train/good": train, "test/good": test_good, "test/defective": defective}
    for split, paths in splits.items():
        (category / split).mkdir(parents=True, exist_ok=True)
        for relative in paths:
            shutil.copyfile(folder / relative, category / split / Path(relative).name)
    return {
        "source": "elpv-dataset 1.0.0.post1 (real EL images, real defects; CC BY-NC-SA 4.0)",
        "train_images": len(train),
        "test_good": len(test_good),
        "test_defective": len(defective),
        "split": "seeded random split of p=0 cells; cells of one module may fall on both sides",
        "defective_definition": "defect probability 1.0",
        "seed": seed,
        "masks": "none: image-level only",
        "files": {split: [Path(p).name for p in paths] for split, paths in splits.items()},
    }


MODULE_GRID = (3, 4)  # (rows, columns) of cells in one module image: 900 x 1200 px
STRIP_GRID = (1, 12)  # one row of cells, as a line-scan strip: 300 x 3600 px
CELL = 300  # side of an ELPV cell, pixels


def build_elpv_module(name: str, root: Path, seed: int = 0, n_train: int = 20, n_test_good: int = 16,
                      n_defective: int = 30) -> dict:
    """Write an ELPV module category: 1200 x 900 px modules of 3 x 4 real cells (`elpv_strip_*`: 3600 x 300
    px strips of 1 x 12 cells), aspect ratio and native resolution of the cells kept. Each defective module
    of `elpv_module_TYPE` holds one real defective cell (p = 1) at a random place, its mask the whole cell
    (ELPV labels cells, not pixels); each of `elpv_module_TYPE_small` (and of the strips) holds one small
    synthetic defect (8-24 px, half of them touching an edge) with its pixel mask, on otherwise good cells.

    Train modules use the cells of `elpv_TYPE`'s train split, each cell once; test modules draw from its test
    cells. Both variants of one type share their train and good test modules.
    """
    small = name.endswith("_small")
    strip = name.startswith("elpv_strip_")
    cell_type = name.removeprefix("elpv_strip_" if strip else "elpv_module_").removesuffix("_small")
    folder, _ = elpv_labels()
    train_cells, test_cells = elpv_good_split(cell_type, seed)
    rows, columns = STRIP_GRID if strip else MODULE_GRID
    per_module = rows * columns
    if n_train * per_module > len(train_cells):
        raise DatasetError(f"{name}: {n_train} train modules need {n_train * per_module} cells, "
                           f"the split has {len(train_cells)}")
    rng = np.random.default_rng(seed)

    def load(cell: str) -> np.ndarray:
        return np.asarray(Image.open(folder / cell).convert("L"))

    def module(cells: list[str]) -> np.ndarray:
        pixels = [load(cell) for cell in cells]
        return np.block([pixels[row * columns : (row + 1) * columns] for row in range(rows)])

    def test_cells_for_module() -> list[str]:
        return [test_cells[i] for i in rng.choice(len(test_cells), per_module, replace=False)]

    category = root / name
    train_order = rng.permutation(len(train_cells))
    for i in range(n_train):
        cells = [train_cells[j] for j in train_order[i * per_module : (i + 1) * per_module]]
        _save_png(module(cells), category / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save_png(module(test_cells_for_module()), category / "test" / "good" / f"{i:03d}.png")
    description = {
        "source": "elpv-dataset 1.0.0.post1 (real EL cells; CC BY-NC-SA 4.0), assembled into "
                  + ("strips" if strip else "modules"),
        "image_size": [columns * CELL, rows * CELL],
        "train_images": n_train,
        "test_good": n_test_good,
        "split": f"train modules from elpv_{cell_type}'s train cells (each cell once); test modules from its "
                 "test cells (a cell may appear in several test modules)",
        "seed": seed,
    }
    if small:
        # Foreign material: a good cell of the other type (poly grains in a mono cell, and the reverse).
        donor = load(elpv_good_split("poly" if cell_type == "mono" else "mono", seed)[0][0])
        n_per_defect = n_defective // len(DEFECTS)
        at_border = _write_small_defects(category, rng, donor, n_per_defect,
                                         lambda relative: module(test_cells_for_module()))
        description["test_defective"] = n_per_defect * len(DEFECTS)
        description["defects"] = (f"synthetic, one per defective image, {SMALL_DEFECT[0]}-{SMALL_DEFECT[1]} px "
                                  f"across ({', '.join(DEFECTS)}); {at_border} touch an image edge")
        return description
    defective = elpv_defective(cell_type)
    description["test_defective"] = n_defective
    places = {"corner": 0, "edge": 0, "interior": 0}
    for i, chosen in enumerate(rng.choice(len(defective), n_defective, replace=False)):
        cells = test_cells_for_module()
        place = int(rng.integers(per_module))
        cells[place] = defective[chosen]
        row, column = divmod(place, columns)
        on_rows, on_columns = row in (0, rows - 1), column in (0, columns - 1)
        places["corner" if on_rows and on_columns else "edge" if on_rows or on_columns else "interior"] += 1
        mask = np.zeros((rows * CELL, columns * CELL), dtype=np.uint8)
        mask[row * CELL : (row + 1) * CELL, column * CELL : (column + 1) * CELL] = 255
        _save_png(module(cells), category / "test" / "defective" / f"{i:03d}.png")
        _save_png(mask, category / "ground_truth" / "defective" / f"{i:03d}_mask.png")
    description["defects"] = (f"real: one defective cell (p = 1) per defective module, in a corner "
                              f"{places['corner']}, on an edge {places['edge']}, inside {places['interior']} times")
    description["masks"] = "the defective cell's square (cell-level labels): pixel AUROC and PRO are coarse here"
    return description


def build_offline_benchmarks(
    root: str | Path, categories: tuple[str, ...] = OFFLINE_CATEGORIES, seed: int = 0, progress: bool = False,
    layout: str = "mvtec",
) -> Path:
    """Write the chosen categories under `root` (each written whole or not at all) with a `benchmark.json`, in
    MVTec AD layout or, the same images, in VisA's or MVTec AD 2's (`patchcore.data.convert`)."""
    root = Path(root)
    if layout not in ("mvtec", *CONVERTIBLE_LAYOUTS):
        raise DatasetError(f"unknown layout {layout!r} for the offline benchmarks; choose from mvtec, "
                           f"{', '.join(CONVERTIBLE_LAYOUTS)}")
    unknown = [c for c in categories if c not in OFFLINE_CATEGORIES]
    if unknown:
        raise DatasetError(f"unknown offline categories {unknown}; choose from {OFFLINE_CATEGORIES}")
    missing = missing_packages(categories)
    if missing:
        quoted = " ".join(f"'{m}'" for m in missing)
        raise DatasetError(f"missing source packages: pip install {quoted} (or pass --install)")
    root.mkdir(parents=True, exist_ok=True)
    description = {}
    for category in tqdm(categories, desc="build", disable=not progress):
        staging = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
        try:
            if category in TEXTURES:
                description[category] = build_texture(category, staging, seed)
            elif category in HIRES:
                description[category] = build_hires(category, staging, seed)
            elif category in ELPV_MODULES + ELPV_STRIPS:
                description[category] = build_elpv_module(category, staging, seed)
            else:
                description[category] = build_elpv(category.removeprefix("elpv_"), staging, seed)
            if layout != "mvtec":
                write_layout(load_mvtec(staging / category), root, layout)
                continue
            target = root / category
            if target.exists():
                shutil.rmtree(target)
            (staging / category).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info_path = root / "benchmark.json"
    existing = json.loads(info_path.read_text()) if info_path.is_file() else {}
    existing.update(description)
    info_path.write_text(json.dumps(existing, indent=2))
    return root
