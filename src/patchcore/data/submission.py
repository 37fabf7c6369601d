"""MVTec AD 2 submissions: the held-back test sets' anomaly maps written, and checked, as its evaluation server reads
them (anomaly_images/OBJECT/SPLIT/NAME.tiff in float16, anomaly_images_thresholded/OBJECT/SPLIT/NAME.png in 0/255),
the structure the dataset's own `check_and_prepare_data_for_upload.py` checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.data.categories import Category
from patchcore.data.mvtec_variants import AD2_UNLABELLED_SPLITS
from patchcore.errors import DatasetError
from patchcore.io.files import atomic_write_bytes
from patchcore.io.images import list_images, read_image_size

MAPS, MASKS = "anomaly_images", "anomaly_images_thresholded"
# Images per object in each held-back test set (both splits have as many): what the server expects.
OFFICIAL_FILE_COUNTS = {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277, "sheet_metal": 142, "vial": 276,
                        "wallplugs": 232, "walnuts": 228}
OFFICIAL_SUFFIXES = {"test_private": "regular", "test_private_mixed": "mixed"}
FLOAT16_MAX = float(np.finfo(np.float16).max)


def write_submission_maps(model, category: Category, submission: Path) -> int:
    """Predict the category's unlabelled splits; write each map (float16 TIFF) and its segmentation at the model's
    pixel threshold, set from good images only (0/255 PNG). Returns the number of images written."""
    import tifffile

    rule = model.decision_rule()
    if rule.region_threshold is None:
        raise DatasetError("a submission needs a model with a pixel threshold (a single model, not an ensemble)")
    written = 0
    for split, images in category.unlabelled:
        for image, prediction in zip(images, model.iter_predict(list(images))):
            anomaly_map = np.nan_to_num(prediction.anomaly_map, nan=0.0)
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, np.clip(anomaly_map, 0, FLOAT16_MAX).astype(np.float16))
            atomic_write_bytes(submission / MAPS / category.name / split / f"{image.stem}.tiff", buffer.getvalue())
            mask = Image.fromarray(((anomaly_map > rule.region_threshold) * 255).astype(np.uint8))
            buffer = io.BytesIO()
            mask.save(buffer, format="PNG")
            atomic_write_bytes(submission / MASKS / category.name / split / f"{image.stem}.png", buffer.getvalue())
            written += 1
    return written


def expected_files(dataset_root: Path | None) -> dict[tuple[str, str], dict[str, tuple[int, int] | None]]:
    """(object, split) -> {file stem: (width, height) or None}: from the dataset's own test images when given,
    else the official test sets' names (000_regular ... for every object)."""
    if dataset_root is None:
        return {(name, split): {f"{i:03d}_{OFFICIAL_SUFFIXES[split]}": None for i in range(count)}
                for name, count in OFFICIAL_FILE_COUNTS.items() for split in AD2_UNLABELLED_SPLITS}
    expected = {}
    for folder in sorted(p for p in Path(dataset_root).iterdir() if p.is_dir()):
        for split in AD2_UNLABELLED_SPLITS:
            if (folder / split).is_dir():
                expected[(folder.name, split)] = {p.stem: read_image_size(p) for p in list_images(folder / split)}
    if not expected:
        raise DatasetError(f"{dataset_root}: no test_private or test_private_mixed folders (MVTec AD 2 layout)")
    return expected


def check_submission(submission: Path, dataset_root: Path | None = None) -> str:
    """Check every folder and file of a submission; the first problem raises `DatasetError` naming it."""
    import tifffile

    expected = expected_files(dataset_root)
    for tree, suffix in ((MAPS, ".tiff"), (MASKS, ".png")):
        root = Path(submission) / tree
        _same_entries(root, {name for name, _ in expected}, "object folders")
        for name in sorted({name for name, _ in expected}):
            _same_entries(root / name, {split for obj, split in expected if obj == name}, "test-set folders")
        for (name, split), files in expected.items():
            folder = root / name / split
            _same_entries(folder, {f"{stem}{suffix}" for stem in files}, "files")
            for stem, size in files.items():
                path = folder / f"{stem}{suffix}"
                if suffix == ".tiff":
                    try:
                        pixels = tifffile.imread(path)
                    except Exception as error:  # tifffile raises many kinds on a broken file
                        raise DatasetError(f"{path}: unreadable TIFF ({error})") from error
                    if pixels.dtype != np.float16:
                        raise DatasetError(f"{path}: the map is {pixels.dtype}, the server reads float16")
                else:
                    try:
                        with Image.open(path) as picture:
                            pixels = np.asarray(picture)
                    except OSError as error:
                        raise DatasetError(f"{path}: unreadable PNG ({error})") from error
                    if not np.isin(np.unique(pixels), (0, 255)).all():
                        raise DatasetError(f"{path}: values other than 0 and 255 in a thresholded map")
                if pixels.ndim != 2:
                    raise DatasetError(f"{path}: not a single-channel image (shape {pixels.shape})")
                if size is not None and (pixels.shape[1], pixels.shape[0]) != size:
                    raise DatasetError(f"{path}: {pixels.shape[1]} x {pixels.shape[0]}, its test image is "
                                       f"{size[0]} x {size[1]}")
    count = sum(len(files) for files in expected.values())
    return (f"{submission}: ready to upload: {count} float16 maps and {count} thresholded PNGs for "
            f"{len({name for name, _ in expected})} object(s); compress it with "
            f"tar -czf {Path(submission).name}.tar.gz -C {Path(submission).parent} {Path(submission).name}")


def _same_entries(folder: Path, required: set[str], what: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing")
    found = {p.name for p in folder.iterdir()}  # hidden files too: the server counts every file
    for problem, names in (("missing", required - found), ("unexpected", found - required)):
        if names:
            shown = ", ".join(sorted(names)[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise DatasetError(f"{folder}: {problem} {what}: {shown}")
