"""Which training images share a cross-fit fold: contiguous runs in file order against interleaved folds (image i in
fold i mod k), per category: the repeat check under each, the nominal scores (median / 95th percentile) against the
good test images', and the decisions at nominal 1 % and 5 % (false alarms / recall / oracle recall, per cent) with
the threshold the package sets from each set of nominal scores. `auto` is what `fold_assignment="auto"` picks:
interleaved unless the repeat check finds repeats there.

    python benchmarks/fold_assignment.py data/offline --out fold_assignment.json
    python benchmarks/fold_assignment.py data/offline --out fold_assignment.json --table

The first command fits each category once (resuming a partial file); the second prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from patchcore import PatchCore
from patchcore.core.crossfit import repeat_report, shift_distance, shift_samples
from patchcore.core.thresholds import suspicious, threshold_at_false_alarm_rate
from patchcore.data.categories import discover_categories, load_category
from patchcore.evaluation.metrics import oracle_recall
from patchcore.io.files import atomic_write_bytes
from patchcore.io.images import load_image

FOLDS = 5


def collect(root: Path, name: str) -> dict:
    category = load_category(root, name)
    model = PatchCore(progress=False, fold_assignment="contiguous")
    extracted = {}
    cross_fit = model._cross_fit

    def keeping_patches(patches, bank, first, folds, interleaved=False):  # the patches fit extracted
        extracted["patches"] = patches
        return cross_fit(patches, bank, first, folds, interleaved)

    model._cross_fit = keeping_patches
    started = time.perf_counter()
    model.fit(list(category.train_images))
    fit_seconds = time.perf_counter() - started
    del model._cross_fit
    patches, names = extracted["patches"], [str(path) for path in category.train_images]
    folds = min(FOLDS, len(names))
    interleaved, _ = model._cross_fit(patches, model.bank_, 0, folds, interleaved=True)
    shift = shift_distance(patches, {number: load_image(names[number]) for number in shift_samples(len(names))},
                           model._embed)
    repeats = {scheme: repeat_report(patches, names, folds, shift, interleaved=scheme == "interleaved")["repeating"]
               for scheme in ("contiguous", "interleaved")}
    test = [(sample.is_anomalous, prediction.score) for sample, prediction in
            zip(category.test_samples, model.iter_predict([sample.image for sample in category.test_samples]))]
    return {"category": name, "n_train": len(names), "fit_seconds": fit_seconds, "repeats": repeats,
            "nominal": {"contiguous": list(map(float, model.nominal_scores_)), "interleaved": interleaved},
            "good": [score for anomalous, score in test if not anomalous],
            "defective": [score for anomalous, score in test if anomalous]}


def decisions(nominal: list[float], good: np.ndarray, defective: np.ndarray, rate: float) -> tuple[float, float, float]:
    """(false alarms, recall, oracle recall) on the test images, as shares, at the shipped threshold."""
    scores = np.asarray(nominal)
    threshold = threshold_at_false_alarm_rate(scores, rate, suspicious(scores)).value
    false_alarms = float((good > threshold).mean())
    return false_alarms, float((defective > threshold).mean()), oracle_recall(good, defective, false_alarms)


def table(results: dict) -> None:
    print("| category | n train | repeats contiguous / interleaved | auto | good test | contiguous | interleaved |")
    print("|---|---|---|---|---|---|---|")
    ratios = {"contiguous": [], "interleaved": [], "auto": []}
    for name, entry in results.items():
        good = np.asarray(entry["good"])
        auto = "contiguous" if entry["repeats"]["interleaved"] else "interleaved"
        cells = []
        for scheme in ("contiguous", "interleaved"):
            nominal = np.asarray(entry["nominal"][scheme])
            cells.append(f"{np.median(nominal):.2f} / {np.percentile(nominal, 95):.2f}")
            ratios[scheme].append(np.median(nominal) / np.median(good))
        ratios["auto"].append(ratios[auto][-1])
        print(f"| {name} | {entry['n_train']} | {entry['repeats']['contiguous']} / {entry['repeats']['interleaved']} | "
              f"{auto} | {np.median(good):.2f} / {np.percentile(good, 95):.2f} | {cells[0]} | {cells[1]} |")
    print("\nmedian nominal / median good test, mean: " + ", ".join(f"{scheme} {np.mean(values):.3f}"
                                                                    for scheme, values in ratios.items()))
    for rate in (0.01, 0.05):
        print(f"\nNominal {rate:.0%}: false alarms / recall / oracle recall, per cent\n")
        print("| category | contiguous | auto |")
        print("|---|---|---|")
        summary = {"contiguous": [], "auto": []}
        for name, entry in results.items():
            good, defective = np.asarray(entry["good"]), np.asarray(entry["defective"])
            auto = "contiguous" if entry["repeats"]["interleaved"] else "interleaved"
            cells = []
            for column, scheme in (("contiguous", "contiguous"), ("auto", auto)):
                measured = decisions(entry["nominal"][scheme], good, defective, rate)
                summary[column].append(measured)
                cells.append(" / ".join(f"{100 * value:.1f}" for value in measured))
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        means = []
        for column in ("contiguous", "auto"):
            rows = np.array(summary[column])
            on_target = sum(0.3 * rate <= fa <= 3 * rate or abs(fa - rate) <= 0.02 for fa in rows[:, 0])
            ratio = np.mean([r / o if o else 1.0 for _, r, o in rows])
            means.append(f"{100 * rows[:, 0].mean():.1f} / {100 * rows[:, 1].mean():.1f} / {100 * rows[:, 2].mean():.1f}; "
                         f"on target {on_target} of {len(rows)}, recall / oracle {ratio:.2f}")
        print(f"| mean | {means[0]} | {means[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--categories", default="all")
    parser.add_argument("--table", action="store_true", help="print the tables of the collected file")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.table:
        table(results)
        return
    names = discover_categories(args.root) if args.categories == "all" else args.categories.split(",")
    for name in names:
        if name in results:
            continue
        results[name] = collect(args.root, name)
        atomic_write_bytes(args.out, json.dumps(results).encode())
        print(f"{name}: {results[name]['n_train']} training images, fit {results[name]['fit_seconds']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
