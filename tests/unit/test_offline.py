import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.data.categories import load_category
from patchcore.errors import DatasetError
from patchcore.data.offline import CROP, DEFECTS, build_offline_benchmarks


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_offline_benchmarks(tmp_path_factory.mktemp("offline"), ("gravel", "elpv_mono"))


def test_texture_category_has_every_defect_with_a_mask(built: Path) -> None:
    category = load_category(built, "gravel")
    assert category.has_masks
    types = {s.defect_type for s in category.test_samples}
    assert types == {"good", *DEFECTS}
    for sample in category.test_samples:
        if sample.mask is not None:
            mask = np.asarray(Image.open(sample.mask)) > 0
            assert mask.shape == (CROP, CROP) and 0 < mask.sum() < mask.size / 4


def test_texture_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = build_offline_benchmarks(tmp_path, ("gravel",))
    for relative in ("train/good/000.png", "test/scratch/003.png", "ground_truth/hole/005_mask.png"):
        assert (built / "gravel" / relative).read_bytes() == (again / "gravel" / relative).read_bytes()


def test_elpv_split_keeps_train_and_test_apart(built: Path) -> None:
    category = load_category(built, "elpv_mono")
    assert not category.has_masks  # image-level labels only
    train = {p.name for p in category.train_images}
    test_good = {s.image.name for s in category.test_samples if not s.is_anomalous}
    assert train and test_good and not (train & test_good)
    info = json.loads((built / "benchmark.json").read_text())["elpv_mono"]
    assert info["train_images"] == len(train) and info["test_defective"] == 313


def test_unknown_category_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown offline categories"):
        build_offline_benchmarks(tmp_path, ("carpet",))


def test_missing_source_package_is_named(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "elpv_dataset" else real_find_spec(name))
    with pytest.raises(DatasetError, match="pip install 'elpv-dataset==1.0.0.post1'"):
        build_offline_benchmarks(tmp_path, ("elpv_poly", "brick"))
    assert not any(tmp_path.iterdir())  # nothing written


def test_high_resolution_panels_hold_one_small_defect_each_half_at_an_edge(tmp_path: Path) -> None:
    from patchcore.data.offline import DEFECTS, build_hires

    info = build_hires("hires_gravel", tmp_path, seed=1, n_train=2, n_test_good=1, n_per_defect=2)
    category = tmp_path / "hires_gravel"
    assert info["image_size"] == [2000, 720]
    assert all(Image.open(p).size == (2000, 720) for p in category.rglob("*.png"))
    masks = sorted((category / "ground_truth").rglob("*_mask.png"))
    assert len(masks) == 2 * len(DEFECTS)
    touching = 0
    for path in masks:
        ys, xs = np.nonzero(np.asarray(Image.open(path)))
        assert 1 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 24  # small: at most 24 px across
        touching += ys.min() == 0 or xs.min() == 0 or ys.max() == 719 or xs.max() == 1999
    assert touching == len(DEFECTS)  # every other defect touches an edge
    # regions.json traces every region of every panel to where it was cut from the photo
    from patchcore.data.offline import texture_photo

    regions = json.loads((category / "regions.json").read_text())
    (height, width), photo = regions["region_size"], texture_photo("gravel")
    panel = np.asarray(Image.open(category / "test" / "good" / "000.png"))
    origins = regions["origins"]["test/good/000.png"]
    assert len(origins) == 48 and len(regions["origins"]) == 2 + 1 + 2 * len(DEFECTS)
    for index, (y, x) in enumerate(origins):
        row, column = divmod(index, regions["grid"][1])
        region = panel[row * height : (row + 1) * height, column * width : (column + 1) * width]
        assert np.array_equal(region, photo[y : y + height, x : x + width])


@pytest.mark.slow
def test_elpv_modules_hold_train_cells_or_one_real_defective_cell_marked_by_its_mask(tmp_path: Path) -> None:
    from patchcore.data.offline import CELL, build_elpv_module, elpv_defective, elpv_good_split, elpv_labels

    info = build_elpv_module("elpv_module_mono", tmp_path, seed=2, n_train=2, n_test_good=1, n_defective=3)
    category = tmp_path / "elpv_module_mono"
    assert info["image_size"] == [1200, 900]
    folder, _ = elpv_labels()
    train_cells, test_cells = elpv_good_split("mono", seed=2)

    def fingerprints(cells: list[str]) -> set[bytes]:
        return {np.asarray(Image.open(folder / cell).convert("L")).tobytes() for cell in cells}

    train, test, defective = fingerprints(train_cells), fingerprints(test_cells), fingerprints(elpv_defective("mono"))

    def cells_of(path: Path) -> list[np.ndarray]:
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (900, 1200)
        return [pixels[y : y + CELL, x : x + CELL] for y in range(0, 900, CELL) for x in range(0, 1200, CELL)]

    for path in sorted((category / "train" / "good").glob("*.png")):
        assert all(cell.tobytes() in train for cell in cells_of(path))
    for path in sorted((category / "test" / "defective").glob("*.png")):
        mask_cells = cells_of(category / "ground_truth" / "defective" / f"{path.stem}_mask.png")
        marked = [bool(cell.all()) for cell in mask_cells]
        assert sum(marked) == 1 and sum(bool(cell.any()) for cell in mask_cells) == 1  # exactly one whole cell
        for cell, is_marked in zip(cells_of(path), marked):
            assert cell.tobytes() in (defective if is_marked else test)


@pytest.mark.slow
def test_elpv_small_defect_modules_share_the_good_modules_and_mark_each_defect_by_its_pixels(tmp_path: Path) -> None:
    from patchcore.data.offline import DEFECTS, build_elpv_module

    build_elpv_module("elpv_module_mono", tmp_path, seed=2, n_train=2, n_test_good=1, n_defective=5)
    build_elpv_module("elpv_module_mono_small", tmp_path, seed=2, n_train=2, n_test_good=1, n_defective=10)
    real, small = tmp_path / "elpv_module_mono", tmp_path / "elpv_module_mono_small"
    for relative in ("train/good/000.png", "train/good/001.png", "test/good/000.png"):
        assert (real / relative).read_bytes() == (small / relative).read_bytes()
    masks = sorted((small / "ground_truth").rglob("*_mask.png"))
    assert len(masks) == 2 * len(DEFECTS)
    touching = 0
    for path in masks:
        mask = np.asarray(Image.open(path)) > 0
        ys, xs = np.nonzero(mask)
        assert mask.shape == (900, 1200) and 1 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 24
        touching += ys.min() == 0 or xs.min() == 0 or ys.max() == 899 or xs.max() == 1199
        image = np.asarray(Image.open(small / "test" / path.parent.name / path.name.replace("_mask", "")))
        assert image.shape == (900, 1200)
    assert touching == len(DEFECTS)  # every other defect touches an edge


@pytest.mark.slow
def test_elpv_strips_are_one_row_of_train_cells_with_small_defects(tmp_path: Path) -> None:
    from patchcore.data.offline import CELL, DEFECTS, build_elpv_module, elpv_good_split, elpv_labels

    info = build_elpv_module("elpv_strip_poly_small", tmp_path, seed=2, n_train=2, n_test_good=1, n_defective=5)
    category = tmp_path / "elpv_strip_poly_small"
    assert info["image_size"] == [3600, 300] and info["test_defective"] == len(DEFECTS)
    folder, _ = elpv_labels()
    train_cells = {np.asarray(Image.open(folder / cell).convert("L")).tobytes() for cell in elpv_good_split("poly", 2)[0]}
    for path in sorted((category / "train" / "good").glob("*.png")):
        strip = np.asarray(Image.open(path))
        assert strip.shape == (300, 3600)
        assert all(strip[:, x : x + CELL].tobytes() in train_cells for x in range(0, 3600, CELL))
    for path in sorted((category / "ground_truth").rglob("*_mask.png")):
        ys, xs = np.nonzero(np.asarray(Image.open(path)))
        assert 1 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= 24
