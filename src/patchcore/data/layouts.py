"""Dataset layouts by name: how each is recognised, where its good training images are, and how a dataset root,
a category folder or a CSV manifest becomes `Category` objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from patchcore.data.categories import GOOD, Category, load_mvtec
from patchcore.data.kolektor import is_kolektorsdd2, kolektorsdd2_training_images, load_kolektorsdd2
from patchcore.data.labelled import (is_labelled_folder, labelled_folder_training_images, load_labelled_folder,
                                     load_manifest)
from patchcore.data.mvtec_variants import (is_btad, is_mvtec_ad2, is_mvtec_loco, load_btad, load_mvtec_ad2,
                                           load_mvtec_loco, validation_images)
from patchcore.data.visa import is_visa_object, load_visa, visa_training_images
from patchcore.errors import DatasetError
from patchcore.io.images import list_images


@dataclass(frozen=True)
class Layout:
    """One published layout: `is_category` recognises one category's folder, `load` reads it (checked), and
    `training_images` lists its good training images without reading the test set (`validation_images`, the
    independent good images some layouts have)."""

    name: str
    title: str
    reference: str  # where the layout is published
    is_category: Callable[[Path], bool]
    load: Callable[[Path], Category]
    training_images: Callable[[Path], list[Path]]
    validation_images: Callable[[Path], list[Path]] | None = None


def _train_folder(name: str) -> Callable[[Path], list[Path]]:
    return lambda folder: list_images(folder / "train" / name)


def _is_mvtec(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir()


# Checked in this order: the MVTec variants before MVTec AD, whose train/good they share.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("mvtec_ad2", "MVTec AD 2", "Heckler-Kram et al. 2025, the dataset's MVTecAD2 class",
           is_mvtec_ad2, load_mvtec_ad2, _train_folder(GOOD), validation_images),
    Layout("mvtec_loco", "MVTec LOCO AD", "Bergmann et al. 2022 (IJCV)", is_mvtec_loco, load_mvtec_loco,
           _train_folder(GOOD), validation_images),
    Layout("mvtec", "MVTec AD", "Bergmann et al. 2019/2021; MPDD (Jezek et al. 2021) has the same layout",
           _is_mvtec, load_mvtec,
           _train_folder(GOOD)),
    Layout("btad", "BTAD (BeanTech)", "Mishra et al. 2021", is_btad, load_btad, _train_folder("ok")),
    Layout("visa", "VisA", "Zou et al. 2022, split_csv/1cls.csv of amazon-science/spot-diff", is_visa_object,
           load_visa, visa_training_images),
    Layout("kolektorsdd2", "KolektorSDD2", "Bozic et al. 2021", is_kolektorsdd2, load_kolektorsdd2,
           kolektorsdd2_training_images),
    Layout("folder", "labelled folder (good/, bad/ or other defect folders, optional masks/)", "this project",
           is_labelled_folder, load_labelled_folder, labelled_folder_training_images),
)}
CSV = "csv"
LAYOUT_NAMES = (*LAYOUTS, CSV)
# The datasets' own layouts: `fit` takes their training split; our labelled folder it refuses (see training_images).
PUBLISHED = tuple(layout for layout in LAYOUTS.values() if layout.name != "folder")


def find_categories(root: Path, layout_name: str | None = None) -> tuple[str, list[Path]]:
    """(layout name, category folders) of a dataset root or of one category's folder; `layout_name` forces
    the layout. A CSV manifest is its own layout (its categories are in its rows)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder or manifest")
    if root.is_file():
        if root.suffix.lower() == ".csv" and layout_name in (None, CSV):
            return CSV, [root]
        raise DatasetError(f"{root}: a file; a dataset is a folder, or a .csv manifest (--layout csv)")
    if layout_name == CSV:
        raise DatasetError(f"{root}: --layout csv takes the manifest's .csv file (columns path, label; optional "
                           "mask, split, category, defect_type)")
    if layout_name is not None and layout_name not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout_name!r}; known: {', '.join(LAYOUT_NAMES)}")
    candidates = [LAYOUTS[layout_name]] if layout_name else list(LAYOUTS.values())
    for layout in candidates:
        if layout.is_category(root):
            return layout.name, [root]
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for layout in candidates:
        found = [child for child in children if layout.is_category(child)]
        if found:
            return layout.name, found
    if layout_name:
        raise DatasetError(f"{root}: not in {LAYOUTS[layout_name].title} layout (neither one category nor a folder of "
                           "them)")
    raise DatasetError(f"{root}: no dataset layout recognised (known: {', '.join(LAYOUT_NAMES)}); for a folder of "
                       "your own, put good images in good/ and defects in bad/ (masks in masks/), or list them "
                       "in a CSV manifest")


def load_dataset(root: Path, layout_name: str | None = None, names: list[str] | None = None,
                 **folder_options: str | None) -> list[Category]:
    """Every category of the dataset at `root` (or those in `names`), loaded and checked before any work
    starts. `folder_options` (good_dir, defect_dirs, mask_dir, good_test_dir) name a labelled folder's parts."""
    options = {key: value for key, value in folder_options.items() if value}
    if options and layout_name is None:
        layout_name = "folder"
    if options and layout_name != "folder":
        raise DatasetError(f"{', '.join(options)}: only for the labelled-folder layout (--layout folder)")
    found, folders = find_categories(root, layout_name)
    if found == CSV:
        categories = {category.name: category for category in load_manifest(folders[0])}
        return [categories[name] for name in _chosen(root, list(categories), names)]
    # Folders are filtered before loading: a category not asked for is never read.
    load = partial(load_labelled_folder, **options) if found == "folder" else LAYOUTS[found].load
    by_name = {folder.name: folder for folder in folders}
    return [load(by_name[name]) for name in _chosen(root, list(by_name), names)]


def _chosen(root: Path, available: list[str], names: list[str] | None) -> list[str]:
    """`names` (all `available` when None), each checked to exist."""
    unknown = [name for name in names or [] if name not in available]
    if unknown:
        raise DatasetError(f"{root}: no category {', '.join(unknown)} (found: {', '.join(available)})")
    return list(names) if names else available


def published_layout(folder: Path) -> Layout | None:
    """The published layout (not our labelled folder) whose category `folder` is."""
    return next((layout for layout in PUBLISHED if layout.is_category(folder)), None)


def training_images(folder: Path) -> list[Path] | None:
    """The good training images of a category folder in a published layout; None for any other folder of
    images. A dataset root of several categories is refused: one model per category. A labelled folder of our
    own (good/ beside bad/) is no published layout: fit refuses it, naming bad/, rather than guess a split."""
    layout = published_layout(folder)
    if layout is not None:
        return layout.training_images(folder)
    children = sorted(p for p in folder.iterdir() if p.is_dir())
    for layout in PUBLISHED:
        found = [child.name for child in children if layout.is_category(child)]
        if found:
            listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise DatasetError(f"{folder}: a {layout.title} dataset of {len(found)} categories ({listed}): fit one "
                               "category's folder (one model per product)")
    return None


def test_images(folder: Path) -> list[Path] | None:
    """What `predict` scores for a category folder of a published layout: its test images (labelled, then any
    unlabelled split), never its training images or masks; None for any other folder."""
    layout = published_layout(folder)
    if layout is None:
        return None
    if layout.name == "mvtec":  # read without its masks: predicting needs none
        if not (folder / "test").is_dir():
            raise DatasetError(f"{folder}: an MVTec-style category without test/: predict its images by naming "
                               "their folder or files")
        return list_images(folder / "test")
    category = layout.load(folder)
    return [sample.image for sample in category.test_samples] + [
        image for _, images in category.unlabelled for image in images]


def describe_dataset(root: Path, categories: list[Category]) -> str:
    """What a dataset holds: its layout, then per category its images per split and label, masks, unlabelled
    splits."""
    layouts = sorted({category.layout for category in categories})
    titles = ", ".join(LAYOUTS[name].title if name in LAYOUTS else "CSV manifest" for name in layouts)
    lines = [f"{root}: {titles} layout, {len(categories)} categor{'y' if len(categories) == 1 else 'ies'}"]
    for category in categories:
        good = sum(not s.is_anomalous for s in category.test_samples)
        types: dict[str, int] = {}
        for sample in category.test_samples:
            if sample.is_anomalous:
                types[sample.defect_type] = types.get(sample.defect_type, 0) + 1
        with_mask = sum(s.mask is not None for s in category.test_samples if s.is_anomalous)
        lines.append(f"{category.name} at {category.root}")
        lines.append(f"  train: {len(category.train_images)} good")
        if category.validation_images:
            lines.append(f"  validation: {len(category.validation_images)} good (they set the threshold)")
        defects = ", ".join(f"{count} {name}" for name, count in sorted(types.items()))
        lines.append(f"  test: {good} good, {sum(types.values())} defective ({defects}); "
                     f"masks for {with_mask} of {sum(types.values())}")
        for split, images in category.unlabelled:
            lines.append(f"  {split}: {len(images)} without labels (predicted for a submission)")
    return "\n".join(lines)
