"""Contaminated good folders: real defective test images moved into a category's training images (5 % and 10 %
of them), then fitted with and without `exclude_suspicious`. Prints how many of the planted images fit names as
suspicious, how many good ones it names, and the image AUROC and decisions on the remaining test images: clean,
contaminated, contaminated with --exclude-suspicious.

    python benchmarks/contamination.py data/offline --categories elpv_mono,gravel --shares 0.05,0.1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from patchcore import PatchCore
from patchcore.data.categories import load_category
from patchcore.evaluation.metrics import image_auroc


def run(model: PatchCore, train: list[Path], planted: set[Path], test: list, label: str) -> str:
    started = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - started
    named = {Path(name).resolve() for name in model.suspicious_training_images_}
    planted = {path.resolve() for path in planted}
    labels = np.array([int(sample.is_anomalous) for sample in test])
    scores = model.score_samples([sample.image for sample in test])
    threshold = model.decision_threshold().value
    false_alarms = float((scores[labels == 0] > threshold).mean())
    recall = float((scores[labels == 1] > threshold).mean())
    return (f"| {label} | {len(train)} | {len(planted & named)} of {len(planted)} | {len(named - planted)} | "
            f"{image_auroc(labels, scores):.1f} | {100 * false_alarms:.1f} | {100 * recall:.1f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", required=True)
    parser.add_argument("--shares", default="0.05,0.1", help="planted defective images per training image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| category, training set | training images | planted named | good named | image AUROC | "
          "false alarms % (nominal 1 %) | recall % | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.categories.split(","):
        category = load_category(args.root, name)
        train = list(category.train_images)
        defective = [sample for sample in category.test_samples if sample.is_anomalous]
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(defective))
        largest = max(round(float(share) * len(train)) for share in args.shares.split(","))
        # The same test images for every row: the defects that may be planted leave the test set once.
        test = [s for s in category.test_samples if s not in {defective[i] for i in order[:largest]}]
        print(run(PatchCore(progress=False), train, set(), test, f"{name}, clean"), flush=True)
        for share in (float(text) for text in args.shares.split(",")):
            planted = [defective[i].image for i in order[: round(share * len(train))]]
            # Planted among the good images at random places, as a slipped part would be.
            mixed = list(train)
            for image in planted:
                mixed.insert(int(rng.integers(0, len(mixed) + 1)), image)
            for exclude in (False, True):
                label = f"{name}, {share:.0%} defective" + (", --exclude-suspicious" if exclude else "")
                print(run(PatchCore(progress=False, exclude_suspicious=exclude), mixed, set(planted), test, label),
                      flush=True)


if __name__ == "__main__":
    main()
