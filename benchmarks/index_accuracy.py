"""Exact against approximate nearest-neighbour search on the same fitted banks: accuracy and time.

    python benchmarks/index_accuracy.py data/offline --indexes exact,ivf --coreset-ratio 0.1

Fits each category once (no hold-out), then evaluates the same memory bank searched by each index,
so the only difference between rows is the search. Prints one JSON line per (category, index).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from patchcore.data.categories import discover_categories, load_category
from patchcore.evaluation.evaluate import evaluate_fitted
from patchcore.core.patchcore import PatchCore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", default=None, help="Comma list (default: all under ROOT).")
    parser.add_argument("--indexes", default="exact,ivf")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--feature-dim", default=None, help="An integer, or 'raw' (every tapped channel).")
    args = parser.parse_args()
    names = args.categories.split(",") if args.categories else discover_categories(args.root)
    for name in names:
        category = load_category(args.root, name)
        feature_dim = args.feature_dim if args.feature_dim in (None, "raw") else int(args.feature_dim)
        model = PatchCore(coreset_ratio=args.coreset_ratio, holdout_fraction=0.0, feature_dim=feature_dim)
        model.fit(list(category.train_images))
        for index in args.indexes.split(","):
            model.index = index
            model.reindex()  # the same bank, searched by another index
            result = evaluate_fitted(category, model, 0.0)
            print(json.dumps({
                "category": name, "index": index, "bank": len(model.memory_bank_),
                "image_auroc": round(result.image_auroc, 2),
                "pixel_auroc": None if result.pixel_auroc is None else round(result.pixel_auroc, 2),
                "pro": None if result.pro is None else round(result.pro, 2),
                "ms_per_image": round(1000 * result.seconds_per_image, 1),
            }), flush=True)


if __name__ == "__main__":
    main()
