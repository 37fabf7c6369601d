"""Decisions on held-out test images, from thresholds set on nominal (cross-fit) scores: per category and nominal
false-alarm rate, the false-alarm rate measured on the good test images and the recall on the defective ones,
against the oracle recall (the best any threshold reaches at the same measured false-alarm rate), for several
ways of setting the threshold; and the bias of the nominal scores against good test images per fold count.

    python benchmarks/calibration_data.py data/offline --out calibration_data.json --folds 5,10,20
    python benchmarks/calibration.py calibration_data.json --folds 10
    python benchmarks/calibration.py calibration_data.json --folds 5 --exclude hires_brick,hires_grass,hires_gravel

Methods: `quantile` (the empirical quantile, the highest score below 1/rate images: the threshold before issue
29), `tail` (a generalized Pareto tail, all scores), `robust normal` (median + z * 1.4826 MAD), `shipped` (what
the package does: suspicious scores left out, then the empirical quantile or a tail fit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import norm

from patchcore.core.thresholds import suspicious, tail_quantile, threshold_at_false_alarm_rate
from patchcore.evaluation.metrics import oracle_recall


def quantile(scores: np.ndarray, rate: float) -> float:
    return float(np.quantile(scores, 1.0 - rate, method="higher"))


def tail(scores: np.ndarray, rate: float) -> float:
    value = tail_quantile(scores, rate) if len(scores) * rate < 5 else None
    return quantile(scores, rate) if value is None else value


def robust_normal(scores: np.ndarray, rate: float) -> float:
    median = np.median(scores)
    return float(median + norm.ppf(1.0 - rate) * 1.4826 * np.median(np.abs(scores - median)))


def shipped(scores: np.ndarray, rate: float) -> float:
    return threshold_at_false_alarm_rate(scores, rate, suspicious(scores)).value


METHODS = {"quantile": quantile, "tail": tail, "robust normal": robust_normal, "shipped": shipped}


def decisions(threshold: float, good: np.ndarray, defective: np.ndarray) -> tuple[float, float, float]:
    """(measured false-alarm rate, recall, oracle recall at no more false alarms than measured)."""
    false_alarms = float((good > threshold).mean())
    return false_alarms, float((defective > threshold).mean()), oracle_recall(good, defective, false_alarms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--folds", default=None, help="the fold count whose nominal scores set thresholds")
    parser.add_argument("--rates", default="0.01,0.05")
    parser.add_argument("--exclude", default="", help="categories left out of every table and mean")
    args = parser.parse_args()
    data = json.loads(args.data.read_text())
    if args.exclude:
        data = {name: entry for name, entry in data.items() if name not in args.exclude.split(",")}
    rates = [float(text) for text in args.rates.split(",")]

    print("## Nominal scores against good test images (median, 95th percentile)\n")
    fold_counts = sorted({folds for entry in data.values() for folds in entry["nominal"] if folds.isdigit()}, key=int)
    print("| category | n train | good test | " + " | ".join(f"{f} folds" for f in fold_counts) + " |")
    print("|---|---|---|" + "---|" * len(fold_counts))
    ratios = {folds: [] for folds in fold_counts}
    for name, entry in data.items():
        good = np.array([t["score"] for t in entry["test"] if t["defect_type"] == "good"])
        cells = []
        for folds in fold_counts:
            nominal = np.array(entry["nominal"][folds]["scores"]) if folds in entry["nominal"] else None
            if nominal is None:
                cells.append("")
                continue
            ratios[folds].append(np.median(nominal) / np.median(good))
            cells.append(f"{np.median(nominal):.2f} / {np.quantile(nominal, 0.95):.2f}")
        print(f"| {name} | {entry['n_train']} | {np.median(good):.2f} / {np.quantile(good, 0.95):.2f} | "
              + " | ".join(cells) + " |")
    print("\nmedian nominal / median good test, mean over categories: "
          + ", ".join(f"{folds} folds {np.mean(values):.3f}" for folds, values in ratios.items() if values))

    for rate in rates:
        print(f"\n## Nominal false-alarm rate {rate:.0%}: measured false alarms / recall / oracle recall (%)\n")
        print("| category | n nominal | " + " | ".join(METHODS) + " |")
        print("|---|---|" + "---|" * len(METHODS))
        totals = {method: [] for method in METHODS}
        for name, entry in data.items():
            counts = [folds for folds in entry["nominal"] if folds.isdigit()]
            folds = args.folds if args.folds in counts else max(counts, key=int)
            nominal = np.array(entry["nominal"][folds]["scores"])
            good = np.array([t["score"] for t in entry["test"] if t["defect_type"] == "good"])
            defective = np.array([t["score"] for t in entry["test"] if t["defect_type"] != "good"])
            cells = []
            for method, estimate in METHODS.items():
                false_alarms, recall, oracle = decisions(estimate(nominal, rate), good, defective)
                totals[method].append((false_alarms, recall, oracle))
                cells.append(f"{100 * false_alarms:.1f} / {100 * recall:.1f} / {100 * oracle:.1f}")
            print(f"| {name} | {len(nominal)} | " + " | ".join(cells) + " |")
        cells = []
        for method, values in totals.items():
            values = np.array(values)
            within = np.mean([(0.3 * rate <= fa <= 3 * rate) or abs(fa - rate) <= 0.02 for fa in values[:, 0]])
            share = np.mean([r / o if o > 0 else 1.0 for _, r, o in values])
            cells.append(f"{100 * values[:, 0].mean():.1f} / {100 * values[:, 1].mean():.1f} / "
                         f"{100 * values[:, 2].mean():.1f}; on target {within:.0%}, recall/oracle {share:.2f}")
        print("| mean | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
