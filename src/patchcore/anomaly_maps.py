"""From patch distances to results: image score with Eq. 7 reweighting, and the blurred anomaly map."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def reweighting_factor(test_to_neighbours: np.ndarray) -> np.ndarray:
    """Eq. 7 weight: 1 - exp(d(m_test*, m*)) / sum over m in N_b(m*) of exp(d(m_test*, m)).

    `test_to_neighbours[i]` holds distances from image i's most anomalous patch m_test* to the
    members of N_b(m*), m* first. N_b(m*) are the b nearest bank entries of m* with m* itself
    counted (as in anomalib), so the fraction is a softmax and the weight lies in [0, 1).
    """
    distances = np.asarray(test_to_neighbours, dtype=np.float64)
    shifted = distances - distances.max(axis=1, keepdims=True)
    softmax_first = np.exp(shifted[:, 0]) / np.exp(shifted).sum(axis=1)
    return 1.0 - softmax_first


def anomaly_map(patch_scores: np.ndarray, size: int, blur_sigma: float) -> np.ndarray:
    """(h, w) patch scores -> (size, size) map: bilinear upsampling, then Gaussian blur (sigma in pixels)."""
    grid = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[None, None]
    upsampled = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return gaussian_filter(upsampled, sigma=blur_sigma) if blur_sigma > 0 else upsampled
