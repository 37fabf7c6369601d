"""From nearest-neighbour distances to results: image scores (Eq. 5-7) and blurred anomaly maps, in torch.

The one implementation of PatchCore's scoring, shared by the library and the exported ONNX graph. The
search is passed in (`Search`), so the library can use a faiss index and the graph a matrix product.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

# queries (N, D), k -> (L2 distances (N, k), bank row indices (N, k)); an index of -1 means "not found".
Search = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def image_scores(
    patches: torch.Tensor,
    patch_scores: torch.Tensor,
    nearest: torch.Tensor,
    bank: torch.Tensor,
    search: Search,
    num_neighbours: int,
    reweight: bool,
) -> torch.Tensor:
    """Image scores (B,) from patches (B, P, D), their distances (B, P) to and indices (B, P) of their nearest bank rows.

    s* is the largest patch distance (Eq. 6). With reweighting (Eq. 7) it is multiplied by
    1 - exp(||m_test* - m*||) / sum over m in N_b(m*) of exp(||m_test* - m||), where N_b(m*) are the b
    bank rows nearest m*, m* itself included (as in anomalib), so the fraction is a softmax term and the
    weight lies in [0, 1). With b = 1 the set is m* alone and the weight would zero every score; as in
    anomalib, b = 1 means s* unweighted.
    """
    worst = patch_scores.argmax(dim=1, keepdim=True)
    scores = patch_scores.gather(1, worst)[:, 0]
    if not reweight or num_neighbours == 1:
        return scores
    anchors = nearest.gather(1, worst)[:, 0]
    _, support = search(bank[anchors], num_neighbours)
    # m* belongs to its own neighbourhood; an approximate search that missed it gets it in the last place.
    has_anchor = (support == anchors[:, None]).any(dim=1)
    last = torch.where(has_anchor, support[:, -1], anchors)
    support = torch.cat([support[:, :-1], last[:, None]], dim=1)
    worst_patch = patches.gather(1, worst[:, :, None].expand(-1, 1, patches.shape[2]))  # (B, 1, D)
    to_support = (bank[support.clamp_min(0)] - worst_patch).norm(dim=2)
    to_support = torch.where(support >= 0, to_support, torch.full_like(to_support, -torch.inf))
    to_anchor = (bank[anchors] - worst_patch[:, 0]).norm(dim=1)
    # 1 - exp(a) / sum exp(s) as 1 - 1 / sum exp(s - a): s >= a when m* is the nearest row, and an exponent
    # that overflows gives the limit, weight 1. Five kernels where logsumexp took a dozen and a host check.
    weight = 1.0 - 1.0 / torch.exp(to_support - to_anchor[:, None]).sum(dim=1)
    return weight * scores


def segment_argmax(values: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """(n_segments,) indices into `values` (N,) of each segment's largest value, the first on ties, as
    `argmax` picks; `segments` (N,) says which segment each value is in, and every segment must have one.
    Tensor ops only: no device sync, whatever the number of segments."""
    peaks = torch.full((n_segments,), -torch.inf, dtype=values.dtype, device=values.device)
    peaks = peaks.scatter_reduce(0, segments, values, "amax")
    positions = torch.arange(len(values), device=values.device)
    at_peak = torch.where(values == peaks[segments], positions, len(values))
    first = torch.full((n_segments,), len(values), dtype=torch.long, device=values.device)
    return first.scatter_reduce(0, segments, at_peak, "amin")


@lru_cache(maxsize=64)
def map_operator(grid_size: int, size: int, blur_sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size, grid_size) matrix that upsamples one axis bilinearly, then blurs it (scipy's Gaussian, 'reflect').

    Both steps are linear and separable, so a map is two small matrix products, A_h S A_w^T: 30x
    faster than filtering the upsampled map, and equal to it within 1e-6. Cached per device (a copy to
    a GPU per map would wait for the copy) and shared: callers must not modify it.
    """
    basis = torch.eye(grid_size, dtype=torch.float64)[None]
    upsampled = F.interpolate(basis, size=size, mode="linear", align_corners=False)[0].T.numpy()
    operator = gaussian_filter1d(upsampled, blur_sigma, axis=0, mode="reflect") if blur_sigma > 0 else upsampled
    return torch.from_numpy(operator.astype(np.float32)).to(device)


def map_operators(grid: tuple[int, int], size: tuple[int, int], blur_sigma: float,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The (rows, columns) operators that turn an (h, w) patch-score grid into a (H, W) blurred map."""
    return (map_operator(grid[0], size[0], float(blur_sigma), device),
            map_operator(grid[1], size[1], float(blur_sigma), device))


def anomaly_maps(patch_scores: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, H, W) maps: bilinear upsampling, then Gaussian blur, as `map_operators` built them."""
    # torch, not numpy: numpy's BLAS threads spin against torch's and faiss's and made a
    # batch-1 predict 3.7x slower on 2 cores.
    return rows.to(patch_scores.device) @ patch_scores @ columns.to(patch_scores.device).T
