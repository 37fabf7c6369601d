"""A model that lives on the line: incremental updates against full refits, and drift as images shift.

    python benchmarks/living_model.py data/offline --categories brick,grass,gravel --steps 3

Updates: fit on the first 40 % of a category's good training images (file order), then
`partial_fit` the rest in STEPS equal parts; after each step, image AUROC, pixel AUROC, PRO, false
alarms at the threshold, bank size and update time, against a full refit on the same images.

Drift: a model fitted on every other training image scores the other half darkened, then blurred,
step by step; each step's drift statistic (share above the threshold, PSI)
and whether the warning fires (`patchcore.monitoring`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import ImageEnhance, ImageFilter

from patchcore import PatchCore
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import evaluate_fitted, machine_description
from patchcore.io.images import load_image
from patchcore.monitoring import drift_report

BRIGHTNESS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6)
BLUR = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def row(category, model, label: str, images: int, seconds: float) -> dict:
    result = evaluate_fitted(category, model, seconds)
    return {"category": category.name, "model": label, "train images": images, "bank rows": model.memory_bank_.shape[0],
            "seconds": round(seconds, 1), "image AUROC": round(result.image_auroc, 1),
            "pixel AUROC": None if result.pixel_auroc is None else round(result.pixel_auroc, 1),
            "PRO": None if result.pro is None else round(result.pro, 1),
            "test false alarms %": result.test_false_alarm_rate, "recall %": result.test_recall}


def updates(category, steps: int, image_size: int | None) -> list[dict]:
    train = list(category.train_images)
    first = int(0.4 * len(train))
    bounds = np.linspace(first, len(train), steps + 1).round().astype(int)
    started = time.perf_counter()
    model = PatchCore(image_size=image_size).fit(train[:first])
    rows = [row(category, model, "fit (start)", first, time.perf_counter() - started)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        started = time.perf_counter()
        model.partial_fit(train[start:stop])
        rows.append(row(category, model, f"update +{stop - start}", int(stop), time.perf_counter() - started))
        started = time.perf_counter()
        refit = PatchCore(image_size=image_size).fit(train[:stop])
        rows.append(row(category, refit, "refit", int(stop), time.perf_counter() - started))
        print(json.dumps(rows[-2:], default=float), flush=True)
    return rows


def drift(category, image_size: int | None) -> list[dict]:
    # Every other training image fits the model; the others are the good images shifted (test sets have
    # too few good images: the warning needs 50).
    train = list(category.train_images)
    model = PatchCore(image_size=image_size).fit(train[::2])
    threshold = model.decision_threshold().value
    good = [load_image(image) for image in train[1::2]]
    shifts = [("brightness", f, lambda im, f=f: ImageEnhance.Brightness(im).enhance(f)) for f in BRIGHTNESS]
    shifts += [("blur sigma", s, lambda im, s=s: im.filter(ImageFilter.GaussianBlur(s)) if s else im) for s in BLUR[1:]]
    rows = []
    for kind, amount, change in shifts:
        report = drift_report(model.nominal_scores_, model.score_samples([change(im) for im in good]), threshold,
                              model.false_alarm_rate)
        rows.append({"category": category.name, "shift": kind, "amount": amount, "images": report.n_recent,
                     "above threshold %": round(100 * report.share_above_threshold, 1), "PSI": round(report.psi, 3),
                     "warning": "yes" if report.warning else "no"})
        print(json.dumps(rows[-1], default=float), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("n/a" if row[c] is None else str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", default="brick,grass,gravel")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--parts", default="updates,drift", help="Which parts to run.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    categories = [load_category(args.root, name) for name in args.categories.split(",")]
    tables = []
    if "updates" in args.parts:
        tables.append(markdown([r for category in categories for r in updates(category, args.steps, args.image_size)]))
    if "drift" in args.parts:
        tables.append(markdown([r for category in categories for r in drift(category, args.image_size)]))
    text = (f"Machine: {machine_description()}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            + "\n\n".join(tables) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
