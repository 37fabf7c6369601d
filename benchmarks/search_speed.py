"""The nearest-neighbour search alone, by index, on one real bank and one image's worth of real queries.

    python benchmarks/search_speed.py data/offline/brick --coreset-ratio 0.1

Fits the category (no hold-out), takes the patches of its first test image as queries (1,024 at 256 px), and
times each index searching them for the nearest row, best of 5: ms per image, us per query, and the share of
queries whose nearest row it finds (against exact search) with the largest patch score it overstates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from patchcore import PatchCore
from patchcore.data.categories import load_category
from patchcore.search import make_index
from timing import best_of  # benchmarks/timing.py, beside this script

INDEXES = (("exact", {}), ("ivf", {}), ("ivf", {"n_probe": 2}), ("ivf", {"rerank_factor": 2}), ("ivfflat", {}),
           ("hnsw", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    args = parser.parse_args()
    category = load_category(args.category.parent, args.category.name)
    model = PatchCore(coreset_ratio=args.coreset_ratio, holdout_fraction=0.0).fit(list(category.train_images))
    bank = np.ascontiguousarray(model.memory_bank_, dtype=np.float32)
    queries = np.ascontiguousarray(model.patch_features([category.test_samples[0].image]), dtype=np.float32)
    true_distances, true_rows = make_index("exact").fit(bank).search(queries, 1)
    print(f"{args.category.name}: bank {bank.shape[0]} x {bank.shape[1]}, {len(queries)} queries (one image)\n")
    print("| index | ms per image | us per query | nearest row found | largest score overstated by |")
    print("|---|---|---|---|---|")
    for kind, settings in INDEXES:
        index = make_index(kind, **settings).fit(bank)
        index.search(queries, 1)  # warm
        seconds = best_of(5, lambda: index.search(queries, 1))
        distances, rows = index.search(queries, 1)
        label = kind + "".join(f", {name}={value}" for name, value in settings.items())
        print(f"| {label} | {1000 * seconds:.2f} | {1e6 * seconds / len(queries):.1f} | "
              f"{np.mean(rows[:, 0] == true_rows[:, 0]):.1%} | {np.max(distances[:, 0] - true_distances[:, 0]):.3f} |")


if __name__ == "__main__":
    main()
