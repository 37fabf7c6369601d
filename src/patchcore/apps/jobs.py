"""The units of work the CLI runs one after another and Ray runs in parallel: fit a category, predict files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from patchcore.core.detector import Detector
from patchcore.data.categories import Category
from patchcore.errors import ImageLoadError
from patchcore.io.images import load_image
from patchcore.apps.outputs import prediction_row
from patchcore.io.visualize import DEFAULT_HEATMAP_SIDE, write_overlay
from patchcore.params import check_params
from patchcore.progress import progress_bar

# Images decoded and scored at a time: bounds the maps and pictures in memory.
PREDICT_CHUNK = 64


def fit_category(category: Category, make_model: Callable[[], Detector], out_dir: Path) -> dict:
    """Fit a fresh model on the category's good training images and save it as `out_dir/NAME`."""
    from patchcore.evaluation.evaluate import fit_on

    model = fit_on(category, make_model)
    saved = model.save(out_dir / category.name)
    return {"category": category.name, "n_train_images": model.n_train_images_, "model_dir": str(saved)}


def with_size_rule(model, size_rule: dict | None):
    """The loaded `model` deciding by region size as `size_rule` says ({"min_defect_area": ..., "pixel_size": ...};
    None or None values: as saved)."""
    size_rule = {name: value for name, value in (size_rule or {}).items() if value is not None}
    if size_rule and not hasattr(model, "min_defect_area"):
        raise ValueError(f"{', '.join(size_rule)} needs a single model: an ensemble decides by its score")
    if size_rule:
        check_params(model.set_params(**size_rule))
    return model


def predict_files(
    model: Detector,
    files: Sequence[Path],
    names: Sequence[str],
    out_dir: Path | None,
    skip_bad: bool = False,
    progress: bool = False,
    heatmap_side: int | None = DEFAULT_HEATMAP_SIDE,
    on_row: Callable[[dict], None] | None = None,
    false_alarm_rate: float | None = None,
) -> tuple[list[dict], list[str]]:
    """Score `files`, writing each heatmap overlay as `out_dir/heatmaps/NAME.png` (none when `out_dir` is None),
    at most `heatmap_side` squared pixels (None: the image's own size); `on_row` gets each score
    row as soon as it is computed; decisions at `false_alarm_rate` (default: the model's own).

    Each file is decoded once, for both its score and its overlay. Returns the score rows in the
    files' order and, with `skip_bad`, the messages of files that are not readable images (without
    it the first such file raises `ImageLoadError`).
    """
    rows: list[dict] = []
    skipped: list[str] = []
    with progress_bar(len(files), "predict", progress) as bar:
        for start in range(0, len(files), PREDICT_CHUNK):
            pictures, kept = [], []
            for file, name in zip(files[start : start + PREDICT_CHUNK], names[start : start + PREDICT_CHUNK]):
                try:
                    pictures.append(load_image(file, model.bit_depth))
                    kept.append((file, name))
                except ImageLoadError as error:
                    if not skip_bad:
                        raise
                    skipped.append(str(error))
            for picture, (file, name), prediction in zip(pictures, kept, model.predict(pictures, false_alarm_rate) if pictures else []):
                prediction.source = str(file)
                if out_dir is not None:
                    write_overlay(out_dir / "heatmaps" / f"{name}.png", picture, prediction.anomaly_map,
                                  model.nominal_map_range_, heatmap_side, prediction.regions)
                rows.append(prediction_row(prediction))
                if on_row is not None:
                    on_row(rows[-1])
            bar.update(min(PREDICT_CHUNK, len(files) - start))
    return rows, skipped


def summary_line(rows: Sequence[dict], n_skipped: int, seconds: float) -> str:
    """What a predict run decided, and how fast: the last line a user reads."""
    decided = {label: sum(row["decision"] == label for row in rows) for label in ("defect", "good")}
    undecided = len(rows) - decided["defect"] - decided["good"]
    parts = [f"{decided['defect']} defect", f"{decided['good']} good"]
    if undecided:
        parts.append(f"{undecided} without a threshold")
    if n_skipped:
        parts.append(f"{n_skipped} skipped")
    rate = len(rows) / seconds if seconds > 0 else float("inf")
    return f"scored {len(rows)} images in {seconds:.1f} s ({rate:.1f} images/s): {', '.join(parts)}"
