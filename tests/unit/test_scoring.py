import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from patchcore.core.scoring import anomaly_maps, image_scores, map_operators, segment_argmax
from patchcore.search import make_index

BANK = torch.tensor([[0, 0], [1, 0], [3, 0], [10, 0]], dtype=torch.float32)
PATCHES = torch.tensor([[[0.5, 0.0], [0.0, 2.0]]])  # one image, two patches


def score(bank: torch.Tensor, patches: torch.Tensor, num_neighbours: int, reweight: bool = True, search=None) -> float:
    exact = make_index("exact").fit(bank.numpy()).search_tensor
    distances, nearest = exact(patches[0], 1)
    return float(image_scores(patches, distances[:, 0][None], nearest[:, 0][None], bank, search or exact,
                              num_neighbours, reweight)[0])


def test_image_score_applies_eq7_around_the_worst_patch() -> None:
    # m_test* = (0, 2), s* = 2, m* = (0, 0); N_3(m*) = {(0,0), (1,0), (3,0)}.
    to_support = np.array([2.0, math.sqrt(5.0), math.sqrt(13.0)])
    weight = 1.0 - math.exp(to_support[0]) / np.exp(to_support).sum()
    assert score(BANK, PATCHES, 3) == pytest.approx(weight * 2.0, rel=1e-6)
    assert score(BANK, PATCHES, 3, reweight=False) == pytest.approx(2.0)
    # b = 1: N_1(m*) = {m*}; read as no reweighting (Eq. 7 literally would give 0 for every image).
    assert score(BANK, PATCHES, 1) == pytest.approx(2.0)


def test_segment_argmax_picks_each_segments_first_largest_value() -> None:
    values = torch.tensor([1.0, 5.0, 5.0, 2.0, -np.inf, -np.inf, 7.0, 0.5, 7.0])
    segments = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3])  # a segment wholly -inf (outside a region) still gets one
    assert segment_argmax(values, segments, 4).tolist() == [1, 3, 4, 6]
    # Interleaved segments, against argmax segment by segment.
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 20, (500,), generator=generator).float()
    segments = torch.randint(0, 37, (500,), generator=generator)
    expected = [int(torch.nonzero(segments == s)[values[segments == s].argmax(), 0]) for s in range(37)]
    assert segment_argmax(values, segments, 37).tolist() == expected


def test_eq7_weight_of_equidistant_neighbours_is_stable_for_large_distances() -> None:
    # Four bank rows exactly 1000 from the test patch: exp(1000) overflows, the weight is still 1 - 1/4.
    bank = torch.tensor([[1000, 0], [0, 1000], [-1000, 0], [0, -1000]], dtype=torch.float32)
    assert score(bank, torch.tensor([[[0.0, 0.0]]]), 4) == pytest.approx(750.0, rel=1e-6)


def test_eq7_keeps_m_star_in_its_neighbourhood_when_an_approximate_search_misses_it() -> None:
    exact = make_index("exact").fit(BANK.numpy()).search_tensor

    def missing_anchor(queries: torch.Tensor, k: int):
        distances, indices = exact(queries, k + 1)
        return distances[:, 1:], indices[:, 1:]  # the nearest (m* itself) left out

    def with_not_found(queries: torch.Tensor, k: int):
        distances, indices = exact(queries, k)
        indices[:, 1:] = -1  # faiss's "no neighbour found"
        return distances, indices

    assert score(BANK, PATCHES, 3, search=missing_anchor) == pytest.approx(score(BANK, PATCHES, 3), rel=1e-6)
    # Only m* found: its softmax term is 1 and the weight 0, never a row read at index -1.
    assert score(BANK, PATCHES, 3, search=with_not_found) == pytest.approx(0.0, abs=1e-6)


def crop_map(grid: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    tensor = torch.from_numpy(grid)[None]
    return anomaly_maps(tensor, *map_operators(grid.shape, size, sigma))[0].numpy()


def test_anomaly_map_peak_stays_where_the_patch_is() -> None:
    grid = np.zeros((28, 28), dtype=np.float32)
    grid[5, 20] = 1.0
    amap = crop_map(grid, (224, 224), 4.0)
    assert amap.shape == (224, 224)
    peak_y, peak_x = np.unravel_index(amap.argmax(), amap.shape)
    # Patch (5, 20) covers pixels [40, 48) x [160, 168) on the stride-8 grid.
    assert 38 <= peak_y <= 50 and 158 <= peak_x <= 170
    assert amap.max() < 1.0  # the blur spreads the peak


@pytest.mark.parametrize("shape, size, sigma", [((28, 28), (224, 224), 4.0), ((14, 21), (96, 150), 2.5),
                                                ((7, 7), (56, 56), 0.0)])
def test_anomaly_map_equals_upsampling_then_scipy_blur(shape, size, sigma: float) -> None:
    scores = np.random.default_rng(0).random(shape).astype(np.float32) * 5
    upsampled = F.interpolate(torch.from_numpy(scores)[None, None], size=size, mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    expected = gaussian_filter(upsampled, sigma=sigma) if sigma else upsampled
    np.testing.assert_allclose(crop_map(scores, size, sigma), expected, atol=1e-5)
