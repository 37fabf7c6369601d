"""Fit and evaluate per category: metrics, timings, memory; results as a table, JSON and Markdown."""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from patchcore.data.categories import GOOD, Category, load_mask
from patchcore.evaluation.metrics import PixelMetrics, SegmentationCounts, image_auroc, oracle_recall
from patchcore.core.detector import Detector
from patchcore.baselines.ensemble import Ensemble
from patchcore.io.files import atomic_write_bytes, output_names
from patchcore.core.thresholds import f1_optimal_threshold
from patchcore.io.visualize import overlay_png, write_overlay

GALLERY_SIZE = 4
# The map maximum counts as on the defect within this many pixels of its mask (the map is blurred).
PEAK_TOLERANCE = 4


@dataclass
class CategoryDetails:
    """What the HTML report draws beyond the table: every test score and the hardest images' overlays."""

    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    images: list[str]
    pro_curve: tuple[np.ndarray, np.ndarray] | None  # (pixel FPR, mean region overlap)
    gallery: list[dict] = field(default_factory=list)  # {image, defect_type, score, overlay_png}


@dataclass
class CategoryResult:
    category: str
    image_auroc: float
    pixel_auroc: float | None  # None: the category has no masks (not 0)
    pro: float | None  # AU-PRO up to a pixel false-positive rate of 0.3 (MVTec AD's protocol)
    fit_seconds: float
    seconds_per_image: float
    peak_memory_mb: float
    memory_bank_size: int | None  # None: the method keeps no memory bank
    n_train: int
    n_test: int
    per_defect_image_auroc: dict[str, float] | None = None  # good vs. each defect type alone
    pro_05: float | None = None  # AU-PRO up to a pixel false-positive rate of 0.05 (MVTec AD 2's headline metric)
    # Defective images whose map maximum lies on their defect (mask grown by PEAK_TOLERANCE px), %.
    peak_on_defect: float | None = None
    # The model's threshold (held-out good images, test set unseen) and what it does on the test set:
    threshold: float | None = None
    nominal_false_alarm_rate: float | None = None  # the rate the threshold was set for, % (the parameter's x 100)
    test_false_alarm_rate: float | None = None  # good test images flagged, %
    test_recall: float | None = None  # defective test images flagged, %
    # The best recall any threshold reaches at no more false alarms than the model's measured ones, %.
    oracle_recall: float | None = None
    threshold_method: str | None = None  # how the threshold was set (tail fit, quantile, highest score)
    # Defect regions at the pixel threshold set from good images: pixel F1 over the test set (MVTec AD 2's
    # protocol), the defective images with a region on their defect (%), and regions per good test image.
    segmentation_f1: float | None = None
    defects_with_region: float | None = None
    regions_per_good_image: float | None = None
    # Hindsight, from the test labels (never used by the model): the best F1 any threshold gives.
    f1_optimal_threshold: float | None = None
    f1_optimal: float | None = None
    details: CategoryDetails | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict:
        """The table and JSON entry: every field but `details`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit_on(category: Category, make_model: Callable[[], Detector | Ensemble]) -> Detector | Ensemble:
    """A fresh model fitted on the category's good training images; its threshold's nominal scores come from
    the category's validation images when its layout has them (MVTec AD 2, LOCO), else from the cross-fit."""
    model = make_model()
    if category.validation_images and isinstance(model, Detector):
        return model.fit(list(category.train_images), validation=list(category.validation_images))
    return model.fit(list(category.train_images))


def evaluate_category(
    category: Category,
    make_model: Callable[[], Detector | Ensemble],
    maps_dir: Path | None = None,
    details: bool = False,
    keep_model: bool = False,
):
    """Fit a fresh model on the category's good training images, then evaluate it on its test set; with
    `keep_model`, (result, model)."""
    started = time.perf_counter()
    model = fit_on(category, make_model)
    result = evaluate_fitted(category, model, time.perf_counter() - started, maps_dir, details)
    return (result, model) if keep_model else result


def _map_names(category: Category) -> dict[Path, str]:
    """Each test image's heatmap name within its defect type's folder: unique, as `predict`'s are."""
    by_type: dict[str, list[Path]] = {}
    for sample in category.test_samples:
        by_type.setdefault(sample.defect_type, []).append(sample.image)
    return {image: name for images in by_type.values() for image, name in zip(images, output_names(images))}


def evaluate_fitted(
    category: Category,
    model: Detector | Ensemble,
    fit_seconds: float,
    maps_dir: Path | None = None,
    details: bool = False,
) -> CategoryResult:
    """Metrics of an already fitted model on the category's test set; `details` keeps what a report draws."""
    pixel_metrics = PixelMetrics() if category.has_masks else None
    region_threshold = model.decision_rule().region_threshold if hasattr(model, "decision_rule") else None
    segmentation = SegmentationCounts(region_threshold) if pixel_metrics and region_threshold is not None else None
    labels, scores, types, peak_hits, region_hits, good_regions = [], [], [], [], [], []
    started = time.perf_counter()
    predictions = model.iter_predict([s.image for s in category.test_samples])
    map_names = _map_names(category) if maps_dir is not None else {}
    for sample, prediction in zip(category.test_samples, predictions):
        labels.append(int(sample.is_anomalous))
        scores.append(prediction.score)
        types.append(sample.defect_type)
        if pixel_metrics is not None:
            size = (prediction.anomaly_map.shape[1], prediction.anomaly_map.shape[0])
            mask = (load_mask(sample.mask, size, category.mask_threshold) if sample.mask
                    else np.zeros(size[::-1], dtype=bool))
            pixel_metrics.update(prediction.anomaly_map, mask)
            if mask.any():
                peak_hits.append(peak_on_mask(prediction.anomaly_map, mask))
            if segmentation is not None:
                segmentation.update(prediction.anomaly_map, mask)
                if mask.any():
                    region_hits.append(any(mask[y0:y1, x0:x1].any()
                                           for x0, y0, x1, y1 in (r.bbox for r in prediction.regions)))
        if prediction.regions is not None and not sample.is_anomalous:
            good_regions.append(len(prediction.regions))
        if maps_dir is not None:
            folder = maps_dir / category.name / sample.defect_type
            write_overlay(folder / f"{map_names[sample.image]}.png", sample.image, prediction.anomaly_map,
                          model.nominal_map_range_, regions=prediction.regions)
    inference_seconds = time.perf_counter() - started
    labels, scores = np.array(labels), np.array(scores)
    result = CategoryResult(
        category=category.name,
        image_auroc=image_auroc(labels, scores),
        pixel_auroc=pixel_metrics.pixel_auroc() if pixel_metrics else None,
        pro=pixel_metrics.pro() if pixel_metrics else None,
        pro_05=pixel_metrics.pro(0.05) if pixel_metrics else None,
        fit_seconds=fit_seconds,
        seconds_per_image=inference_seconds / len(labels),
        peak_memory_mb=peak_memory_mb(),
        memory_bank_size=int(model.memory_bank_.shape[0]) if hasattr(model, "memory_bank_") else None,
        n_train=len(category.train_images),
        n_test=len(labels),
        per_defect_image_auroc=per_defect_auroc(np.array(types), scores),
        peak_on_defect=100 * float(np.mean(peak_hits)) if peak_hits else None,
        segmentation_f1=segmentation.f1() if segmentation is not None else None,
        defects_with_region=100 * float(np.mean(region_hits)) if region_hits else None,
        regions_per_good_image=float(np.mean(good_regions)) if good_regions else None,
        **threshold_columns(model, labels, scores),
    )
    if details:
        result.details = CategoryDetails(
            labels, scores, types, [str(s.image) for s in category.test_samples],
            pixel_metrics.pro_curve() if pixel_metrics else None,
            gallery(category, model, labels, scores),
        )
    return result


def peak_on_mask(anomaly_map: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum lies on the defect, within PEAK_TOLERANCE pixels of its mask."""
    if not np.isfinite(anomaly_map).any():
        return False
    y, x = np.unravel_index(np.nanargmax(anomaly_map), anomaly_map.shape)
    near = mask[max(0, y - PEAK_TOLERANCE) : y + PEAK_TOLERANCE + 1, max(0, x - PEAK_TOLERANCE) : x + PEAK_TOLERANCE + 1]
    return bool(near.any())


def threshold_columns(model: Detector | Ensemble, labels: np.ndarray, scores: np.ndarray) -> dict:
    """The held-out threshold's rates on the test set, and the test set's own F1-optimal threshold."""
    columns: dict = {}
    threshold = model.decision_threshold()
    if threshold is not None:
        flagged = scores > threshold.value
        false_alarms = float(flagged[labels == 0].mean())
        columns.update(threshold=threshold.value, nominal_false_alarm_rate=100 * threshold.false_alarm_rate,
                       test_false_alarm_rate=100 * false_alarms, test_recall=100 * float(flagged[labels == 1].mean()),
                       oracle_recall=100 * oracle_recall(scores[labels == 0], scores[labels == 1], false_alarms),
                       threshold_method=threshold.method)
    columns["f1_optimal_threshold"], f1 = f1_optimal_threshold(labels, scores)
    columns["f1_optimal"] = 100 * f1
    return columns


def gallery(category: Category, model: Detector | Ensemble, labels: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Overlays of the highest-scored good images and the lowest-scored defects: the model's near misses."""
    good, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    chosen = [*good[np.argsort(-scores[good])][:GALLERY_SIZE], *defective[np.argsort(scores[defective])][:GALLERY_SIZE]]
    samples = [category.test_samples[i] for i in chosen]
    entries = []
    for sample, prediction in zip(samples, model.predict([s.image for s in samples])):
        entries.append({"image": str(sample.image), "defect_type": sample.defect_type, "score": prediction.score,
                        "overlay_png": overlay_png(sample.image, prediction.anomaly_map, model.nominal_map_range_,
                                                   regions=prediction.regions),
                        "regions": len(prediction.regions or [])})
    return entries


def per_defect_auroc(types: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image AUROC of the good images against each defect type on its own: which defects are missed."""
    good = types == GOOD
    return {
        defect: image_auroc(np.r_[np.zeros(good.sum()), np.ones((types == defect).sum())],
                            np.r_[scores[good], scores[types == defect]])
        for defect in sorted(set(types.tolist()) - {GOOD})
    }


def mean_row(results: Sequence[CategoryResult]) -> dict:
    def mean(name: str) -> float | None:
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        return float(np.mean(values)) if values else None

    skip = ("category", "per_defect_image_auroc", "details", "threshold", "f1_optimal_threshold", "threshold_method")
    return {"category": "mean", **{f.name: mean(f.name) for f in fields(CategoryResult) if f.name not in skip}}


COLUMNS = (
    ("category", "category", "{}"),
    ("image_auroc", "image AUROC", "{:.1f}"),
    ("pixel_auroc", "pixel AUROC", "{:.1f}"),
    ("pro", "PRO", "{:.1f}"),
    ("pro_05", "AU-PRO 0.05", "{:.1f}"),
    ("peak_on_defect", "map max on defect %", "{:.0f}"),
    ("fit_seconds", "fit s", "{:.1f}"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("memory_bank_size", "bank size", "{:.0f}"),
    ("threshold", "threshold", "{:.3f}"),
    ("nominal_false_alarm_rate", "nominal false alarms %", "{:.1f}"),
    ("test_false_alarm_rate", "false alarms % at threshold", "{:.1f}"),
    ("test_recall", "recall % at threshold", "{:.1f}"),
    ("oracle_recall", "oracle recall %", "{:.1f}"),
    ("segmentation_f1", "segmentation F1 %", "{:.1f}"),
    ("defects_with_region", "defects with a region on them %", "{:.0f}"),
    ("regions_per_good_image", "regions / good image", "{:.2f}"),
    ("f1_optimal", "F1-optimal %", "{:.1f}"),
)


# What results.json's numbers are in: rates, AUROC, PRO and F1 in per cent (as the tables print them); the
# parameters as given (their false_alarm_rate is a share: 0.01 is 1 %).
RESULT_UNITS = {"per cent": ["image_auroc", "pixel_auroc", "pro", "pro_05", "peak_on_defect", "nominal_false_alarm_rate",
                             "test_false_alarm_rate", "test_recall", "oracle_recall", "segmentation_f1",
                             "defects_with_region", "f1_optimal", "per_defect_image_auroc"],
                "seconds": ["fit_seconds", "seconds_per_image"], "megabytes": ["peak_memory_mb"],
                "params": "as given to the model: false_alarm_rate is a share (0.01 = 1 %)"}


def markdown_table(rows: Sequence[dict]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [header, rule]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "n/a" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The columns papers report per dataset, in their order: MVTec AD 2's headline is AU-PRO to FPR 0.05 and pixel F1
# at a threshold from good images; the others report image AUROC, pixel AUROC and AU-PRO to FPR 0.3.
LITERATURE_COLUMNS = {
    "mvtec_ad2": (("pro_05", "AU-PRO 0.05"), ("segmentation_f1", "SegF1"), ("image_auroc", "I-AUROC")),
    "default": (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("pro", "AU-PRO 0.3")),
}


def literature_table(rows: Sequence[dict], layout: str | None) -> str:
    """The dataset's usual table: a row per category and the mean, the columns papers report for it."""
    columns = LITERATURE_COLUMNS.get(layout or "", LITERATURE_COLUMNS["default"])
    lines = ["| category | " + " | ".join(title for _, title in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[key]:.1f}" if row.get(key) is not None else "n/a" for key, _ in columns]
        lines.append(f"| {row['category']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_description() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_implementation()} {platform.python_version()}"


def write_results(results: Sequence[CategoryResult], params: dict, out_dir: Path, command: str,
                  layout: str | None = None) -> str:
    """results.json and results.md: every column, then the dataset's usual columns (`layout`: its name)."""
    rows = [r.row() for r in results] + [mean_row(results)]
    table = markdown_table(rows)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    document = {"command": command, "date": when, "machine": machine_description(), "params": params,
                "layout": layout, "units": RESULT_UNITS, "results": rows}
    atomic_write_bytes(out_dir / "results.json", json.dumps(document, indent=2, default=str).encode())
    usual = ", ".join(title for _, title in LITERATURE_COLUMNS.get(layout or "", LITERATURE_COLUMNS["default"]))
    text = (f"Command: `{command}`\n\nDate: {when}. Machine: {machine_description()}.\n\n{table}\n\n"
            f"As papers report it ({usual}; per cent):\n\n{literature_table(rows, layout)}\n")
    atomic_write_bytes(out_dir / "results.md", text.encode())
    return table
