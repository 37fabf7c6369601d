"""The evaluation report: one self-contained HTML file with tables, curves, histograms and hardest images."""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from patchcore.evaluation.evaluate import CategoryResult, machine_description, markdown_table, mean_row  # noqa: E402
from patchcore.io.files import atomic_write_bytes  # noqa: E402
from patchcore.io.visualize import legend_html  # noqa: E402

PRO_LIMIT = 0.3

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1d2430; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #dde1e8; text-align: right; font-size: 14px; }
th:first-child, td:first-child { text-align: left; }
.plots img { width: 32%; min-width: 300px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 220px; font-size: 13px; }
.gallery img { width: 220px; }
.gallery figure.wide, .gallery figure.wide img { width: 100%; }
section { border-top: 2px solid #1d2430; margin-top: 24px; }
"""


def write_report(results: Sequence[CategoryResult], params: dict, out_dir: Path, command: str) -> Path:
    """Write `report.html` into `out_dir` for results evaluated with `details=True`; returns its path."""
    missing = [r.category for r in results if r.details is None]
    if missing:
        raise ValueError(f"no details kept for {missing}: evaluate with details=True to report")
    rows = [r.row() for r in results] + [mean_row(results)]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>PatchCore evaluation</title>",
        f"<style>{STYLE}</style></head><body><h1>PatchCore evaluation</h1>",
        f"<p>Command: <code>{html.escape(command)}</code><br>Date: {when}. Machine: "
        f"{html.escape(machine_description())}.<br>Parameters: <code>{html.escape(str(params))}</code></p>",
        "<h2>Summary</h2>", markdown_to_html(markdown_table(rows)),
        "<p>Threshold: set at the model's false-alarm rate on scores of good training images that were left "
        "out of the bank that scored them (cross-fit folds, or the --validation images); the test "
        "columns show what it does on the test set; oracle recall: the best recall any threshold reaches at the "
        "same measured false-alarm rate. Regions: the map above the pixel threshold set from the good images' "
        "maps (outlined in magenta below); segmentation F1 over all test pixels at that threshold. F1-optimal: "
        "the best F1 any threshold reaches on the test labels, in hindsight (never used by the model).</p>",
    ]
    parts += [category_section(result) for result in results]
    parts.append("</body></html>")
    path = Path(out_dir) / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path


def category_section(result: CategoryResult) -> str:
    details = result.details
    plots = [roc_plot(details.labels, details.scores, result.image_auroc)]
    if details.pro_curve is not None:
        plots.append(pro_plot(*details.pro_curve, result.pro))
    plots.append(histogram_plot(details.labels, details.scores, result.threshold, result.f1_optimal_threshold))
    images = "".join(f"<img alt='{alt}' src='data:image/png;base64,{png}'>" for alt, png in plots)
    defects = "".join(f"<tr><td>{html.escape(name)}</td><td>{auroc:.1f}</td></tr>"
                      for name, auroc in (result.per_defect_image_auroc or {}).items())
    gallery = "".join(
        f"<figure class='{_shape(entry['overlay_png'])}'>"
        f"<img alt='overlay' src='data:image/png;base64,{base64.b64encode(entry['overlay_png']).decode()}'>"
        f"<figcaption>{html.escape(entry['defect_type'])}, score {entry['score']:.3f}, "
        f"{entry['regions']} region{'' if entry['regions'] == 1 else 's'} outlined<br>"
        f"{html.escape(Path(entry['image']).name)}</figcaption></figure>"
        for entry in details.gallery
    )
    method = f"<p>Threshold: {html.escape(result.threshold_method)}.</p>" if result.threshold_method else ""
    return (
        f"<section><h2>{html.escape(result.category)}</h2>{method}"
        f"{markdown_to_html(markdown_table([result.row()]))}"
        f"<table><tr><th>defect type</th><th>image AUROC vs. good</th></tr>{defects}</table>"
        f"<div class='plots'>{images}</div>"
        "<h3>Hardest images: highest-scored good images, then lowest-scored defects</h3>"
        f"{legend_html()}"
        f"<div class='gallery'>{gallery}</div></section>"
    )


def _shape(png: bytes) -> str:
    """'wide' for a line-scan strip or other image at least twice as wide as high: it gets the whole row."""
    width, height = Image.open(io.BytesIO(png)).size
    return "wide" if width >= 2 * height else ""


def markdown_to_html(table: str) -> str:
    lines = [line.strip("|").split("|") for line in table.splitlines() if not line.startswith("|---")]
    header = "".join(f"<th>{html.escape(cell.strip())}</th>" for cell in lines[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in lines[1:])
    return f"<table><tr>{header}</tr>{body}</table>"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_plot(labels: np.ndarray, scores: np.ndarray, auroc: float) -> tuple[str, str]:
    false_positive, true_positive, _ = roc_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    axes.plot(false_positive, true_positive, color="#2a6ad3")
    axes.plot([0, 1], [0, 1], color="#9ca3af", linestyle=":")
    axes.set(xlabel="false-positive rate (good images)", ylabel="true-positive rate (defects)",
             title=f"Image ROC, AUROC {auroc:.1f} %")
    return "image ROC curve", _png(figure)


def pro_plot(false_positive: np.ndarray, overlap: np.ndarray, pro: float | None) -> tuple[str, str]:
    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    axes.plot(false_positive, overlap, color="#2e7d32")
    axes.axvspan(0, PRO_LIMIT, color="#2e7d32", alpha=0.08, label=f"PRO area (FPR <= {PRO_LIMIT})")
    axes.set(xlabel="pixel false-positive rate", ylabel="mean region overlap", xlim=(0, 1), ylim=(0, 1.02),
             title=f"PRO curve, PRO {pro:.1f} %")
    axes.legend(loc="lower right", fontsize=8)
    return "PRO curve", _png(figure)


def histogram_plot(labels: np.ndarray, scores: np.ndarray, threshold: float | None,
                   f1_threshold: float | None) -> tuple[str, str]:
    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    bins = np.histogram_bin_edges(scores, bins=30)
    axes.hist(scores[labels == 0], bins=bins, alpha=0.6, color="#2e7d32", label="good")
    axes.hist(scores[labels == 1], bins=bins, alpha=0.6, color="#c62828", label="defect")
    if threshold is not None:
        axes.axvline(threshold, color="#1d2430", label="threshold (good, left out)")
    if f1_threshold is not None:
        axes.axvline(f1_threshold, color="#1d2430", linestyle="--", label="F1-optimal (test)")
    axes.set(xlabel="image score", ylabel="images", title="Scores of test images")
    axes.legend(fontsize=8)
    return "score histogram", _png(figure)
