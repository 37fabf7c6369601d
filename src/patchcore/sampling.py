"""Memory-bank subsampling: greedy k-center coreset (Algorithm 1), random, learned basis proxies (Eq. 8)."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

SAMPLERS = ("greedy_coreset", "random", "learned_proxies")


def coreset_size(n_total: int, ratio: float) -> int:
    """How many of `n_total` entries a ratio keeps: at least one, at most all."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset_ratio must be in (0, 1], got {ratio}")
    return min(n_total, max(1, math.ceil(ratio * n_total)))


def random_projection(features: torch.Tensor, projection_dim: int, seed: int) -> torch.Tensor:
    """Johnson-Lindenstrauss projection to `projection_dim` dims; features already that small stay as they are."""
    if projection_dim <= 0 or features.shape[1] <= projection_dim:
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
) -> np.ndarray:
    """Indices of `n_select` rows chosen by greedy k-center (minimax facility location).

    Start from one seeded random row; repeatedly add the row farthest from everything chosen.
    Keeps one running min-distance per row: O(N) memory, never the N x N matrix.
    """
    points = torch.as_tensor(features, dtype=torch.float32)
    n_total = points.shape[0]
    if not 1 <= n_select <= n_total:
        raise ValueError(f"n_select must be in [1, {n_total}], got {n_select}")
    device = torch.device(device)
    points = random_projection(points.to(device), projection_dim, seed)
    if device.type == "cpu":
        # numpy's OpenBLAS mat-vec measured 4x faster than torch's MKL one on this loop's CPUs.
        points = points.numpy()
        min_squared = np.full(n_total, np.inf, dtype=np.float32)
    else:
        min_squared = torch.full((n_total,), float("inf"), device=device)
    squared_norms = (points * points).sum(1)
    start = int(np.random.default_rng(seed).integers(n_total))
    selected = np.empty(n_select, dtype=np.int64)
    current = start
    for step in tqdm(range(n_select), desc="coreset", disable=not progress, leave=False, mininterval=1.0):
        selected[step] = current
        squared = squared_norms - 2.0 * (points @ points[current]) + squared_norms[current]
        min_squared = _minimum(min_squared, squared)
        # Rounding can leave a chosen row a tiny positive distance: pin it so it is never re-chosen.
        min_squared[current] = -1.0
        current = int(min_squared.argmax())
    return selected


def _minimum(running: np.ndarray | torch.Tensor, new: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(running, np.ndarray):
        return np.minimum(running, new, out=running)
    return torch.minimum(running, new, out=running)


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
    for _ in tqdm(range(steps), desc="proxies", disable=not progress, leave=False, mininterval=1.0):
        batch = points[torch.randint(n_total, (min(batch_size, n_total),), generator=generator)].to(device)
        weights = torch.softmax(-torch.cdist(batch, proxies), dim=1)
        loss = ((batch - weights @ proxies) ** 2).sum(dim=1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return proxies.detach().cpu().numpy()


def covering_radius(features: np.ndarray, selected: np.ndarray, chunk: int = 4096) -> float:
    """Largest distance from any row of `features` to its nearest selected row (the minimax objective)."""
    centers = torch.as_tensor(features[selected], dtype=torch.float64)
    worst = 0.0
    for start in range(0, len(features), chunk):
        block = torch.as_tensor(features[start : start + chunk], dtype=torch.float64)
        worst = max(worst, float(torch.cdist(block, centers).min(dim=1).values.max()))
    return worst
