"""What the cross-fit threshold does on a category's test set, for several numbers of folds.

    python benchmarks/threshold_folds.py data/offline brick --folds 5,7

For each fold count: fit PatchCore (defaults) on the category, predict its test set and print the
threshold, the share of good test images flagged and of defective ones found at it (nominal rate
1 %), and how many training images the repeat check flagged. On the textures, 7 folds put each of the
seven training tiles' 25 crops in a fold of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from patchcore import PatchCore
from patchcore.io.images import collect_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("category")
    parser.add_argument("--folds", default="5", help="comma-separated fold counts")
    args = parser.parse_args()
    category = args.root / args.category
    files = collect_images(category)  # its test images
    for folds in (int(text) for text in args.folds.split(",")):
        model = PatchCore(threshold_folds=folds, progress=False).fit(category)
        predictions = model.predict(files)
        good = [p.decision == "defect" for p, f in zip(predictions, files) if f.parent.name == "good"]
        found = [p.decision == "defect" for p, f in zip(predictions, files) if f.parent.name != "good"]
        print(f"{args.category}, {folds} folds: threshold {model.decision_threshold().value:.2f}, good flagged "
              f"{100 * np.mean(good):.1f} %, defects found {100 * np.mean(found):.1f} %, repeating training "
              f"images {model.repeated_images_['repeating']} of {model.repeated_images_['checked']}", flush=True)


if __name__ == "__main__":
    main()
