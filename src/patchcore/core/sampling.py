"""Memory-bank subsampling: greedy k-center coreset (Algorithm 1), random, learned basis proxies (Eq. 8), or
none; each sampler an object whose `sample` turns the training patches into a memory bank."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from patchcore.core.bank import MemoryBank, TrainingPatches
from patchcore.progress import progress_bar


@dataclass(frozen=True)
class Sampler(ABC):
    """How the bank is chosen from the training patches: `ratio` of them (at least one), seeded."""

    ratio: float = 0.1
    seed: int = 0
    projection_dim: int = 128
    device: str | torch.device = "cpu"
    progress: bool = False

    @abstractmethod
    def sample(self, patches: TrainingPatches) -> MemoryBank: ...

    def _size(self, patches: TrainingPatches) -> int:
        return coreset_size(len(patches), self.ratio)


class GreedyCoresetSampler(Sampler):
    """Greedy k-center coreset in a random projection (Algorithm 1): the rows that cover every patch best."""

    def sample(self, patches: TrainingPatches) -> MemoryBank:
        rows = greedy_coreset(patches.features, self._size(patches), self.projection_dim, self.seed, self.device,
                              progress=self.progress)
        return patches.bank(rows)


class RandomSampler(Sampler):
    """A seeded random subset of the patches (the paper's baseline sampler)."""

    def sample(self, patches: TrainingPatches) -> MemoryBank:
        rows = random_subsample(len(patches), self._size(patches), self.seed)
        return patches.bank(rows)


class LearnedProxiesSampler(Sampler):
    """Learned basis proxies (Eq. 8): new vectors, from no one image."""

    def sample(self, patches: TrainingPatches) -> MemoryBank:
        proxies = learned_proxies(patches.features, self._size(patches), seed=self.seed, device=self.device,
                                  progress=self.progress)
        return MemoryBank(proxies, None)


class KeepAll(Sampler):
    """Every patch (the full bank)."""

    def sample(self, patches: TrainingPatches) -> MemoryBank:
        return patches.bank()


SAMPLERS: dict[str, type[Sampler]] = {"greedy_coreset": GreedyCoresetSampler, "random": RandomSampler,
                                      "learned_proxies": LearnedProxiesSampler, "none": KeepAll}


def make_sampler(name: str, ratio: float, **settings) -> Sampler:
    """The sampler of that name; a ratio of 1 keeps every patch, whichever is named."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return (KeepAll if ratio >= 1.0 else SAMPLERS[name])(ratio=ratio, **settings)


def coreset_size(n_total: int, ratio: float) -> int:
    """How many of `n_total` entries a ratio keeps: at least one, at most all."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset_ratio must be in (0, 1], got {ratio}")
    return min(n_total, max(1, math.ceil(ratio * n_total)))


def random_projection(features: torch.Tensor, projection_dim: int, seed: int) -> torch.Tensor:
    """Johnson-Lindenstrauss projection to `projection_dim` dims.

    Features with fewer than twice `projection_dim` dims stay as they are: the projection would save
    under half of the search's arithmetic and cost a copy of the whole bank (Lite0's 152 dims to 128
    measured 0.84x the bank's memory on a 2-million-patch fit).
    """
    if projection_dim <= 0 or features.shape[1] < 2 * projection_dim:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
    return features @ matrix.to(features.device, features.dtype)


def greedy_coreset(
    features: np.ndarray | torch.Tensor,
    n_select: int,
    projection_dim: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    candidates: int = 256,
) -> np.ndarray:
    """Indices of `n_select` rows chosen by greedy k-center (minimax facility location).

    Start from one seeded random row; repeatedly add the row farthest from everything chosen.
    Keeps one running min-distance per row: O(N) memory, never the N x N matrix. The rows stay on
    `device`, where the work over all of them runs (matrix products, top-k).
    """
    points = torch.as_tensor(features, dtype=torch.float32)
    n_total = points.shape[0]
    if not 1 <= n_select <= n_total:
        raise ValueError(f"n_select must be in [1, {n_total}], got {n_select}")
    points = random_projection(points.to(torch.device(device)), projection_dim, seed)
    start = int(np.random.default_rng(seed).integers(n_total))
    with progress_bar(n_select, "coreset", progress, unit="row", leave=False, mininterval=1.0) as bar:
        return _batched_greedy(points, n_select, start, candidates, bar)


def _batched_greedy(points: torch.Tensor, n_select: int, start: int | None, candidates: int, bar: tqdm,
                    initial_min_squared: torch.Tensor | None = None, stop_squared: float = -np.inf) -> np.ndarray:
    """Exact greedy k-center with the distance updates batched into matrix products.

    The plain loop updates every row's min-distance after each pick: a mat-vec per pick, bound by
    memory bandwidth (and on a GPU by a kernel launch or two per pick). Here the `candidates` rows
    with the largest min-distances are taken aside, to the host, and the greedy runs on them alone,
    updating only their distances, while the best of them still beats every other row's current
    (upper-bound) min-distance: then it is the very row the plain loop would pick. When it no longer
    does, all rows are updated at once, on their device, with one matrix product against the centres
    picked since (BLAS-3, several times faster), and new candidates are drawn. On 200,000 random
    rows in 128 dimensions that refresh comes once per ~200 picks.

    To continue an existing coreset, `initial_min_squared` holds each row's squared distance to it and
    `start` is None; picking stops early once the farthest row is within `stop_squared`.
    """
    n_total = len(points)
    if points.device.type == "cpu":  # numpy's rounding, as the CPU path had before it ran on other devices too
        squared_norms = torch.from_numpy(np.einsum("ij,ij->i", points.numpy(), points.numpy()))
    else:
        squared_norms = (points * points).sum(dim=1)
    if initial_min_squared is None:
        min_squared = torch.full((n_total,), np.inf, device=points.device)
    else:
        min_squared = initial_min_squared.to(points.device, torch.float32, copy=True)
    selected = [] if start is None else [start]
    pending = list(selected)
    while True:
        if pending:
            _update_min_squared(points, squared_norms, min_squared, torch.tensor(pending, device=points.device))
        bar.update(len(pending))
        pending = []
        if len(selected) == n_select:
            return np.array(selected, dtype=np.int64)
        n_candidates = min(candidates, n_total - len(selected))
        chosen, candidate_min, candidate_norms, candidate_points, threshold = _farthest(
            points, squared_norms, min_squared, n_candidates)
        # The candidates' squared distances to each other, in one small product: a pick then costs a row's
        # minimum, not a mat-vec (2.8 against 7-12 us per pick on the host, where every device picks).
        between = candidate_norms[:, None] - 2.0 * (candidate_points @ candidate_points.T) + candidate_norms[None, :]
        while len(selected) < n_select:
            best = int(candidate_min.argmax())
            if candidate_min[best] < threshold:
                break  # a row outside the candidates may now be farther: refresh all rows
            if candidate_min[best] <= stop_squared:  # and so is every other row: all covered
                return np.array(selected, dtype=np.int64)
            centre = int(chosen[best])
            selected.append(centre)
            pending.append(centre)
            np.minimum(candidate_min, between[best], out=candidate_min)
            candidate_min[best] = -1.0


def _farthest(points: torch.Tensor, squared_norms: torch.Tensor, min_squared: torch.Tensor, count: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The `count` rows with the largest min-distances, on the host: (indices, min-distances, squared norms,
    points), and the largest min-distance of every other row (-inf when there is none)."""
    n_total = len(points)
    # On a CPU, numpy's partition and fancy indexing: torch's ops between numpy's BLAS calls waited ms for threads.
    if points.device.type == "cpu":
        points, squared_norms, min_squared = points.numpy(), squared_norms.numpy(), min_squared.numpy()
        if count < n_total:
            order = np.argpartition(min_squared, n_total - count - 1)
            chosen, threshold = order[n_total - count :], float(min_squared[order[n_total - count - 1]])
        else:
            chosen, threshold = np.arange(n_total), -np.inf
        return chosen, min_squared[chosen].copy(), squared_norms[chosen], points[chosen], threshold
    if count < n_total:
        values, order = torch.topk(min_squared, count + 1, sorted=True)
        chosen, threshold = order[:count], float(values[count])
    else:
        chosen, threshold = torch.arange(n_total, device=points.device), -np.inf
    # One transfer: the candidates' min-distances, norms and points side by side.
    taken = torch.cat([min_squared[chosen, None], squared_norms[chosen, None], points[chosen]], dim=1).cpu().numpy()
    return chosen.cpu().numpy(), taken[:, 0].copy(), taken[:, 1].copy(), np.ascontiguousarray(taken[:, 2:]), threshold


def _update_min_squared(points: torch.Tensor, squared_norms: torch.Tensor, min_squared: torch.Tensor,
                        centres: torch.Tensor, chunk: int = 65536) -> None:
    """min_squared <- min(min_squared, squared distance to the nearest of `centres`), in place."""
    on_host = points.device.type == "cpu"
    if on_host:  # the same arithmetic on numpy views: numpy's BLAS ran this product 1.3x faster than torch's on 2 cores
        points, squared_norms, min_squared, centres = (t.numpy() for t in (points, squared_norms, min_squared, centres))
    scaled = -2.0 * points[centres]
    centre_norms = squared_norms[centres, None]
    for start in range(0, len(points), chunk):
        stop = start + chunk
        # (centres, chunk) layout: the min over centres then runs along contiguous rows (measured 2x faster).
        products = scaled @ points[start:stop].T
        products += centre_norms
        nearest = (products.min(axis=0) if on_host else products.amin(dim=0)) + squared_norms[start:stop]
        window = min_squared[start:stop]
        window[:] = np.minimum(window, nearest) if on_host else torch.minimum(window, nearest)
    # Rounding can leave a chosen row a tiny positive distance: pin it so it is never re-chosen.
    min_squared[centres] = -1.0


def extend_coreset(
    candidates: np.ndarray,
    distance_to_bank: np.ndarray,
    max_select: int,
    radius: float,
) -> np.ndarray:
    """Greedy k-center continued from an existing bank: indices of `candidates` to add, farthest first.

    `distance_to_bank` holds each candidate's distance to the bank (the points already chosen). Picks
    stop when every candidate lies within `radius` of the bank and the picks so far (the covering radius
    the bank was built to), or after `max_select` picks.
    """
    initial = torch.from_numpy(np.square(np.asarray(distance_to_bank, dtype=np.float32)))
    points = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))
    with tqdm(disable=True) as bar:
        return _batched_greedy(points, min(max_select, len(points)), None, 256, bar, initial_min_squared=initial,
                               stop_squared=radius * radius)


def random_subsample(n_total: int, n_select: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n_select, replace=False))


def learned_proxies(
    features: np.ndarray,
    n_proxies: int,
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 512,
    learning_rate: float = 0.03,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """`n_proxies` learned vectors that reconstruct the features (the seed's Eq. 8 ablation).

    Each feature m is rebuilt as sum_k w_k p_k with w = softmax_k(-||m - p_k||); the proxies start as a
    seeded random subset and are fitted with Adam on mini-batches to minimise ||m - sum_k w_k p_k||^2.
    The seed prints the weight as exp(+||m - p_k||): a weight that grows with distance rebuilds m
    from its farthest proxies, which cannot reconstruct anything, so the sign is flipped here.
    Returns new vectors (n_proxies, D), not a subset of the rows.
    """
    n_total = len(features)
    if not 1 <= n_proxies <= n_total:
        raise ValueError(f"n_proxies must be in [1, {n_total}], got {n_proxies}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    points = torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32)
    start = torch.randperm(n_total, generator=generator)[:n_proxies]
    proxies = points[start].clone().to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([proxies], lr=learning_rate)
    with progress_bar(steps, "proxies", progress, unit="step", leave=False, mininterval=1.0) as bar:
        for _ in range(steps):
            batch = points[torch.randint(n_total, (min(batch_size, n_total),), generator=generator)].to(device)
            weights = torch.softmax(-torch.cdist(batch, proxies), dim=1)
            loss = ((batch - weights @ proxies) ** 2).sum(dim=1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.update()
    return proxies.detach().cpu().numpy()


def covering_radius(features: np.ndarray, selected: np.ndarray, chunk: int = 4096) -> float:
    """Largest distance from any row of `features` to its nearest selected row (the minimax objective)."""
    centers = torch.as_tensor(features[selected], dtype=torch.float64)
    worst = 0.0
    for start in range(0, len(features), chunk):
        block = torch.as_tensor(features[start : start + chunk], dtype=torch.float64)
        worst = max(worst, float(torch.cdist(block, centers).min(dim=1).values.max()))
    return worst
