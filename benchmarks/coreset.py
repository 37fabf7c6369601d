"""Greedy coreset selection: our batched exact greedy against the plain one-mat-vec-per-pick loop.

    python benchmarks/coreset.py --rows 200000 --dim 1024 --ratio 0.1

Both run in this process on the same bank (seeded clustered Gaussian features, or the real patch
features of an MVTec-layout category with --category), with the same random projection to 128 dims
(only for banks of 256 dims or more, as `greedy_coreset` does) and start row. Prints each one's time, covering radius and peak memory growth, and the ratios.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from patchcore.evaluation.evaluate import machine_description
from patchcore.core.sampling import coreset_size, covering_radius, greedy_coreset, random_projection


def plain_greedy(points: np.ndarray, n_select: int, start: int) -> np.ndarray:
    """The textbook loop (norms + one mat-vec per pick), as the package ran before the batched version."""
    squared_norms = np.einsum("ij,ij->i", points, points)
    min_squared = np.full(len(points), np.inf, dtype=np.float32)
    selected = np.empty(n_select, dtype=np.int64)
    current = start
    for step in range(n_select):
        selected[step] = current
        np.minimum(min_squared, squared_norms - 2.0 * (points @ points[current]) + squared_norms[current],
                   out=min_squared)
        min_squared[current] = -1.0
        current = int(min_squared.argmax())
    return selected


def clustered_bank(rows: int, dim: int, seed: int) -> np.ndarray:
    """Features with structure (clusters of different spread), like patch features of one product."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(500, dim)).astype(np.float32)
    spread = rng.uniform(0.5, 2.0, size=500).astype(np.float32)
    labels = rng.integers(0, 500, rows)
    bank = rng.standard_normal((rows, dim), dtype=np.float32)
    for start in range(0, rows, 8192):  # in place, chunk by chunk: the peak stays at one bank
        block = slice(start, start + 8192)
        bank[block] *= spread[labels[block], None]
        bank[block] += centres[labels[block]]
    return bank


def category_bank(category: Path) -> np.ndarray:
    from patchcore.data.categories import load_category
    from patchcore.core.patchcore import PatchCore

    loaded = load_category(category.parent, category.name)
    model = PatchCore(sampler="random", coreset_ratio=0.01, holdout_fraction=0.0).fit(list(loaded.train_images))
    return model.patch_features(list(loaded.train_images)).reshape(-1, model.feature_dim_)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--category", type=Path, default=None, help="Use this category's real patch features.")
    parser.add_argument("--skip-plain", action="store_true", help="Only time the batched greedy.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bank = category_bank(args.category) if args.category else clustered_bank(args.rows, args.dim, args.seed)
    n_select = coreset_size(len(bank), args.ratio)
    bank_mb = bank.nbytes / 2**20
    projected_dims = random_projection(torch.zeros(1, bank.shape[1]), 128, args.seed).shape[1]
    print(f"Machine: {machine_description()}. Bank {bank.shape[0]} x {bank.shape[1]} float32 ({bank_mb:.0f} MB), "
          f"selecting {n_select} ({args.ratio:.0%}), greedy search in {projected_dims} dims.")

    before = peak_mb()
    started = time.perf_counter()
    batched = greedy_coreset(bank, n_select, projection_dim=128, seed=args.seed)
    batched_seconds = time.perf_counter() - started
    batched_growth = peak_mb() - before

    projected = random_projection(torch.from_numpy(bank), 128, args.seed).numpy()
    batched_radius = covering_radius(projected, batched)
    print(f"batched exact greedy: {batched_seconds:.1f} s (incl. any projection), covering radius {batched_radius:.4f}, "
          f"peak memory growth {batched_growth:.0f} MB ({batched_growth / bank_mb:.2f} x bank)")
    if args.skip_plain:
        return
    started = time.perf_counter()
    plain = plain_greedy(projected, n_select, int(batched[0]))
    plain_seconds = time.perf_counter() - started
    plain_radius = covering_radius(projected, plain)
    same = len(np.intersect1d(plain, batched)) / n_select
    print(f"plain loop:           {plain_seconds:.1f} s (any projection excluded), covering radius {plain_radius:.4f}")
    print(f"ratio plain / batched time: {plain_seconds / batched_seconds:.1f}x; radius ratio "
          f"{batched_radius / plain_radius:.4f}; same rows chosen: {100 * same:.2f} %")


if __name__ == "__main__":
    main()
