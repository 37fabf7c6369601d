"""Memory-bank subsampling: greedy k-center coreset (Algorithm 1), random, learned basis proxies (Eq. 8), or
none; each sampler an object whose `sample` turns the training patches into a memory bank."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
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
    bound = PrincipalBound.of(points.numpy()) if points.device.type == "cpu" else None
    with progress_bar(n_select, "coreset", progress, unit="row", leave=False, mininterval=1.0) as bar:
        return _batched_greedy(points, n_select, start, candidates, bar, bound=bound)


def _batched_greedy(points: torch.Tensor, n_select: int, start: int | None, candidates: int, bar: tqdm,
                    initial_min_squared: torch.Tensor | None = None, stop_squared: float = -np.inf,
                    bound: PrincipalBound | None = None) -> np.ndarray:
    """Exact greedy k-center with the distance updates batched into matrix products.

    The plain loop updates every row's min-distance after each pick: a mat-vec per pick, bound by
    memory bandwidth (and on a GPU by a kernel launch or two per pick). Here the `candidates` rows
    with the largest min-distances are taken aside, to the host, and the greedy runs on them alone,
    updating only their distances, while the best of them still beats every other row's current
    (upper-bound) min-distance: then it is the very row the plain loop would pick. When it no longer
    does, all rows are updated at once, on their device, with one matrix product against the centres
    picked since (BLAS-3, several times faster), and new candidates are drawn. On 200,000 random
    rows in 128 dimensions that refresh comes once per ~200 picks.

    A `bound` skips, in each refresh, the rows that no new centre can come nearer to (the same picks, fewer
    products); it is dropped once it no longer skips enough to pay for itself.

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
    computed: list[float] = []  # share of rows each refresh computed
    while True:
        if pending:
            computed.append(_update_min_squared(points, squared_norms, min_squared,
                                                torch.tensor(pending, device=points.device), bound))
            if bound is not None and not bound.pays(computed):
                bound = None
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
                        centres: torch.Tensor, bound: PrincipalBound | None = None, chunk: int = 65536) -> float:
    """min_squared <- min(min_squared, squared distance to the nearest of `centres`), in place; returns the share
    of rows whose distances were computed (the rest skipped by the `bound`, host only)."""
    on_host = points.device.type == "cpu"
    if on_host:  # the same arithmetic on numpy views: numpy's BLAS ran this product 1.3x faster than torch's on 2 cores
        points, squared_norms, min_squared, centres = (t.numpy() for t in (points, squared_norms, min_squared, centres))
    scaled = -2.0 * points[centres]
    centre_norms = squared_norms[centres, None]
    lower = bound.lower_bounds(centres) if bound is not None else None
    computed = 0
    for start in range(0, len(points), chunk):
        rows = slice(start, start + chunk)
        if lower is not None:
            rows = start + np.flatnonzero(lower(rows) < min_squared[rows] + bound.slack)
        # (centres, rows) layout: the min over centres then runs along contiguous rows (measured 2x faster).
        products = scaled @ points[rows].T
        products += centre_norms
        nearest = (products.min(axis=0) if on_host else products.amin(dim=0)) + squared_norms[rows]
        current = min_squared[rows]
        min_squared[rows] = np.minimum(current, nearest) if on_host else torch.minimum(current, nearest)
        computed += len(nearest)
    # Rounding can leave a chosen row a tiny positive distance: pin it so it is never re-chosen.
    min_squared[centres] = -1.0
    return computed / len(points)


@dataclass(frozen=True)
class PrincipalBound:
    """Cheap lower bounds of the rows' squared distances, to skip rows in the greedy's refreshes.

    For rows split into their leading principal components and the rest, |x - c|^2 >= |x_lead - c_lead|^2 +
    (|x_rest| - |c_rest|)^2 (the rest's distance is at least the difference of its lengths). Kept as
    `dims` + 2 coordinates per row (the last a constant 1, so that one product adds the centres' squared norms;
    a quarter of Lite0's 152 dims, and 22 % more memory than the bank), the bound costs a product in `dims` + 2
    instead of the rows' width. On whole-image patches it leaves 10-30 % of the rows to compute once the first
    refreshes are done.
    """

    coordinates: np.ndarray
    squared_norms: np.ndarray
    slack: float  # float32 rounding of both expanded products, so that no row that could come nearer is skipped
    block = 2048  # rows per product: the (centres, rows) block stays in cache for the minimum that follows
    # Early refreshes compute most rows (every row is still far from the few centres). A bound that, after
    # `trial_refreshes`, left more than `worth_it` of the rows to compute in each of the last 8 costs more than
    # it saves (1.7x slower on Gaussian noise, where it skips about 5 %: benchmarks/coreset_trials.py - noise).
    trial_refreshes = 16
    worth_it = 0.8

    @classmethod
    def of(cls, points: np.ndarray, dims: int = 32, sample: int = 50_000) -> PrincipalBound | None:
        """The bound for `points`, or None where rows are too narrow for it to save anything."""
        if points.shape[1] < 3 * dims:
            return None
        mean = points.mean(axis=0, dtype=np.float64)
        centred = points[:: max(1, len(points) // sample)] - mean
        _, basis = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        leading = np.ascontiguousarray(basis[:, ::-1][:, :dims], dtype=np.float32)
        coordinates = np.ones((len(points), dims + 2), dtype=np.float32)
        for start in range(0, len(points), 65536):  # in blocks: never a centred copy of the whole bank
            rows = slice(start, start + 65536)
            block = points[rows] - mean.astype(np.float32)
            lead = block @ leading
            rest = np.einsum("ij,ij->i", block, block) - np.einsum("ij,ij->i", lead, lead)
            coordinates[rows, :dims] = lead
            coordinates[rows, dims] = np.sqrt(np.maximum(rest, 0.0))
        squared_norms = np.einsum("ij,ij->i", coordinates[:, :-1], coordinates[:, :-1])
        widest = float(np.einsum("ij,ij->i", points, points).max()) + float(squared_norms.max())
        return cls(coordinates, squared_norms, 1e-5 * widest)

    def pays(self, computed: list[float]) -> bool:
        """Whether to keep bounding, given the share of rows each refresh so far computed."""
        return len(computed) <= self.trial_refreshes or min(computed[-8:]) <= self.worth_it

    def lower_bounds(self, centres: np.ndarray) -> Callable[[slice], np.ndarray]:
        """A function of a row slice: each of its rows' lower bound on the squared distance to its nearest centre."""
        scaled = -2.0 * self.coordinates[centres]
        scaled[:, -1] = self.squared_norms[centres]

        def of_rows(rows: slice) -> np.ndarray:
            bounds = self.squared_norms[rows].copy()
            for start in range(0, len(bounds), self.block):
                products = scaled @ self.coordinates[rows][start : start + self.block].T
                bounds[start : start + self.block] += products.min(axis=0)
            return bounds

        return of_rows


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
