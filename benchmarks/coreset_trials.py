"""Trials at making the greedy coreset faster on real whole-image patches, against the exact greedy refreshing
every row (as it was before the principal bound).

    python benchmarks/coreset_trials.py data/offline elpv_module_mono --dims 152,96,64,48 --triangle
    python benchmarks/coreset_trials.py - noise --dims 128 --keep-bound    # 200,000 x 128 seeded Gaussian rows

1. The greedy in a lower random projection (Lite0's 152 dims are not projected): time, and the covering radius the
   selection reaches in the original space.
2. The principal bound, as shipped (`sampling.PrincipalBound`, exact): time, covering radius, whether the
   selection is the same set. With `--keep-bound`, also the greedy with a bound it never drops (the shipped one
   drops a bound that keeps computing most rows, as on noise).
3. With `--triangle`, triangle-inequality pruning of each refresh (exact): a row whose nearest centre lies at least
   twice the row's distance from every new centre cannot come nearer; only the other rows are updated. Prints the
   time, whether the selection is the same set, and the share of rows that still had to be updated.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from patchcore import PatchCore
from patchcore.core import sampling
from patchcore.core.sampling import PrincipalBound, _batched_greedy, _update_min_squared, coreset_size
from patchcore.data.categories import load_category


def covering_radius(points: torch.Tensor, norms: torch.Tensor, selected: np.ndarray) -> float:
    """`sampling.covering_radius` in float32 through the greedy's own update: its float64 cdist over 336,000 x
    33,600 rows would take longer than the trials."""
    nearest = torch.full((len(points),), np.inf)
    _update_min_squared(points, norms, nearest, torch.from_numpy(selected))
    nearest[torch.from_numpy(selected)] = 0
    return float(nearest.clamp_min(0).max().sqrt())


def pruned_update(state: dict, points, squared_norms, min_squared, centres, chunk: int = 65536) -> None:
    """`_update_min_squared`, skipping rows that no new centre can come nearer to."""
    rows_all, norms, current, new = points.numpy(), squared_norms.numpy(), min_squared.numpy(), centres.numpy()
    assign, earlier = state["assign"], state["centres"]
    if len(earlier):
        between = norms[earlier][:, None] - 2.0 * (rows_all[earlier] @ rows_all[new].T) + norms[new][None, :]
        reach = np.sqrt(np.maximum(between.min(axis=1), 0))
        need = np.flatnonzero(reach[assign] < 2.0 * np.sqrt(np.maximum(current, 0)) * 1.001 + 1e-3)
    else:
        need = np.arange(len(rows_all))
    state["updated"] += len(need)
    state["total"] += len(rows_all)
    scaled, centre_norms, offset = -2.0 * rows_all[new], norms[new, None], len(earlier)
    for start in range(0, len(need), chunk):
        rows = need[start : start + chunk]
        products = scaled @ rows_all[rows].T + centre_norms
        best = products.argmin(axis=0)
        nearest = products[best, np.arange(len(rows))] + norms[rows]
        better = nearest < current[rows]
        current[rows[better]] = nearest[better]
        assign[rows[better]] = offset + best[better]
    current[new] = -1.0
    assign[new] = offset + np.arange(len(new))
    state["centres"] = np.concatenate([earlier, new])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("category")
    parser.add_argument("--dims", default="152,96,64,48")
    parser.add_argument("--triangle", action="store_true", help="also the triangle-inequality trial (minutes)")
    parser.add_argument("--keep-bound", action="store_true", help="also the principal bound never dropped")
    args = parser.parse_args()
    if args.category == "noise":  # rows without leading directions: the bound's worst case
        bank = np.random.default_rng(0).normal(size=(200_000, 128)).astype(np.float32)
    else:
        category = load_category(args.root, args.category)
        model = PatchCore(sampler="random", coreset_ratio=0.01, holdout_fraction=0.0, progress=False)
        model.fit(list(category.train_images))
        bank = np.ascontiguousarray(model.patch_features(list(category.train_images)), dtype=np.float32)
    n_select = coreset_size(len(bank), 0.1)
    points = torch.from_numpy(bank)
    norms = torch.from_numpy(np.einsum("ij,ij->i", bank, bank))
    start = int(np.random.default_rng(0).integers(len(bank)))
    print(f"{args.category}: {bank.shape[0]} x {bank.shape[1]} patches, selecting {n_select}\n")
    print("| greedy in | seconds | covering radius (original space) |\n|---|---|---|")
    exact = None
    for dim in map(int, args.dims.split(",")):
        projected = points
        if dim < bank.shape[1]:
            generator = torch.Generator().manual_seed(0)
            projected = (points @ (torch.randn(bank.shape[1], dim, generator=generator) / dim**0.5)).contiguous()
        started = time.perf_counter()
        with tqdm(disable=True) as bar:
            selected = _batched_greedy(projected, n_select, start, 256, bar)
        seconds = time.perf_counter() - started
        exact = selected if dim >= bank.shape[1] else exact
        print(f"| {min(dim, bank.shape[1])} dims | {seconds:.1f} | {covering_radius(points, norms, selected):.4f} |",
              flush=True)
    started = time.perf_counter()
    with tqdm(disable=True) as bar:
        bounded = _batched_greedy(points, n_select, start, 256, bar, bound=PrincipalBound.of(bank))
    seconds = time.perf_counter() - started
    same = exact is not None and set(bounded) == set(exact)
    print(f"| {bank.shape[1]} dims, principal bound (shipped) | {seconds:.1f} | "
          f"{covering_radius(points, norms, bounded):.4f} (same set: {same}) |", flush=True)
    if args.keep_bound:
        never_dropped = PrincipalBound.of(bank)
        object.__setattr__(never_dropped, "worth_it", 1.0)  # no share of rows exceeds it
        started = time.perf_counter()
        with tqdm(disable=True) as bar:
            kept = _batched_greedy(points, n_select, start, 256, bar, bound=never_dropped)
        seconds = time.perf_counter() - started
        print(f"| {bank.shape[1]} dims, principal bound never dropped | {seconds:.1f} | "
              f"{covering_radius(points, norms, kept):.4f} (same set: {exact is not None and set(kept) == set(exact)}) |",
              flush=True)
    if not args.triangle:
        return
    state = {"assign": np.zeros(len(bank), dtype=np.int64), "centres": np.empty(0, dtype=np.int64), "updated": 0,
             "total": 0}
    original = sampling._update_min_squared
    sampling._update_min_squared = lambda p, s, m, c, chunk=65536: pruned_update(state, p, s, m, c, chunk)
    try:
        started = time.perf_counter()
        with tqdm(disable=True) as bar:
            pruned = sampling._batched_greedy(points, n_select, start, 256, bar)
        seconds = time.perf_counter() - started
    finally:
        sampling._update_min_squared = original
    same = exact is not None and set(pruned) == set(exact)
    print(f"\npruned exact greedy: {seconds:.1f} s, same set as the exact greedy: {same}, rows updated "
          f"{state['updated'] / state['total']:.0%}")


if __name__ == "__main__":
    main()
