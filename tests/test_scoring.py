import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from patchcore.core.scoring import anomaly_map, reweighting_factor
from patchcore.core.patchcore import PatchCore


def test_eq7_weight_by_hand() -> None:
    # 1 - e^1 / (e^1 + e^2 + e^3) = 1 - 1 / (1 + e + e^2)
    expected = 1.0 - 1.0 / (1.0 + math.e + math.e**2)
    assert reweighting_factor(np.array([[1.0, 2.0, 3.0]]))[0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.909969, abs=1e-6)


def test_eq7_is_stable_for_large_distances() -> None:
    weight = reweighting_factor(np.array([[1000.0, 1000.0, 1000.0, 1000.0]]))[0]
    assert weight == pytest.approx(0.75)


def test_image_score_applies_eq7_around_the_worst_patch() -> None:
    bank = np.array([[0, 0], [1, 0], [3, 0], [10, 0]], dtype=np.float32)
    model = PatchCore(num_neighbours=3)
    model._set_bank(bank)
    patches = np.array([[[0.5, 0.0], [0.0, 2.0]]], dtype=np.float32)  # one image, two patches
    distances, nearest = model.index_.search(patches[0], k=1)
    score = model._image_scores(patches, distances[:, 0][None], nearest[:, 0][None])[0]
    # m_test* = (0, 2), s* = 2, m* = (0, 0); N_3(m*) = {(0,0), (1,0), (3,0)}.
    to_support = np.array([2.0, math.sqrt(5.0), math.sqrt(13.0)])
    weight = 1.0 - math.exp(to_support[0]) / np.exp(to_support).sum()
    assert score == pytest.approx(weight * 2.0, rel=1e-6)
    model.reweight = False
    assert model._image_scores(patches, distances[:, 0][None], nearest[:, 0][None])[0] == pytest.approx(2.0)
    # b = 1: N_1(m*) = {m*}; read as no reweighting (Eq. 7 literally would give 0 for every image).
    model.reweight, model.num_neighbours = True, 1
    assert model._image_scores(patches, distances[:, 0][None], nearest[:, 0][None])[0] == pytest.approx(2.0)


def test_anomaly_map_peak_stays_where_the_patch_is() -> None:
    grid = np.zeros((28, 28), dtype=np.float32)
    grid[5, 20] = 1.0
    amap = anomaly_map(grid, 224, blur_sigma=4.0)
    assert amap.shape == (224, 224)
    peak_y, peak_x = np.unravel_index(amap.argmax(), amap.shape)
    # Patch (5, 20) covers pixels [40, 48) x [160, 168) on the stride-8 grid.
    assert 38 <= peak_y <= 50 and 158 <= peak_x <= 170
    assert amap.max() < 1.0  # the blur spreads the peak


@pytest.mark.parametrize("shape, size, sigma", [((28, 28), 224, 4.0), ((14, 21), 96, 2.5), ((7, 7), 56, 0.0)])
def test_anomaly_map_equals_upsampling_then_scipy_blur(shape: tuple[int, int], size: int, sigma: float) -> None:
    scores = np.random.default_rng(0).random(shape).astype(np.float32) * 5
    upsampled = F.interpolate(torch.from_numpy(scores)[None, None], size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    expected = gaussian_filter(upsampled, sigma=sigma) if sigma else upsampled
    np.testing.assert_allclose(anomaly_map(scores, size, sigma), expected, atol=1e-5)
