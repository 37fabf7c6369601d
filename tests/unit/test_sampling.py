import itertools

import numpy as np
import torch
import pytest

from patchcore.core import sampling
from patchcore.core.sampling import PrincipalBound, coreset_size, covering_radius, greedy_coreset, random_subsample


@pytest.fixture()
def points() -> np.ndarray:
    rng = np.random.default_rng(3)
    # Clustered data, where a covering choice matters more than on uniform noise.
    centers = rng.normal(scale=10, size=(20, 16))
    return (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)


def test_greedy_covers_better_than_random(points: np.ndarray) -> None:
    greedy = greedy_coreset(points, 60, seed=0)
    for seed in range(5):
        assert covering_radius(points, greedy) < covering_radius(points, random_subsample(len(points), 60, seed))


def test_greedy_is_within_twice_the_optimal_radius() -> None:
    small = np.random.default_rng(1).normal(size=(14, 3)).astype(np.float32)
    k = 3
    optimal = min(covering_radius(small, np.array(c)) for c in itertools.combinations(range(len(small)), k))
    for seed in range(5):
        greedy = covering_radius(small, greedy_coreset(small, k, seed=seed))
        assert optimal <= greedy <= 2 * optimal + 1e-6


def test_selection_is_unique_and_seeded(points: np.ndarray) -> None:
    first = greedy_coreset(points, 500, projection_dim=8, seed=7)
    assert len(np.unique(first)) == 500
    assert np.array_equal(first, greedy_coreset(points, 500, projection_dim=8, seed=7))
    assert not np.array_equal(first, greedy_coreset(points, 500, projection_dim=8, seed=8))


def test_selecting_every_point_returns_each_once(points: np.ndarray) -> None:
    chosen = greedy_coreset(points[:50], 50)
    assert sorted(chosen.tolist()) == list(range(50))


def test_coreset_size_bounds() -> None:
    assert coreset_size(1000, 0.1) == 100
    assert coreset_size(5, 0.01) == 1
    with pytest.raises(ValueError, match="coreset_ratio"):
        coreset_size(10, 0.0)


def _reconstruction_error(proxies: np.ndarray, points: np.ndarray) -> float:
    import torch

    points_t, proxies_t = torch.as_tensor(points), torch.as_tensor(proxies)
    weights = torch.softmax(-torch.cdist(points_t, proxies_t), dim=1)
    return float(((points_t - weights @ proxies_t) ** 2).sum(dim=1).mean())


def test_learned_proxies_reconstruct_better_than_their_random_start(points: np.ndarray) -> None:
    from patchcore.core.sampling import learned_proxies

    start = learned_proxies(points, 60, seed=0, steps=0)
    learned = learned_proxies(points, 60, seed=0, steps=150)
    assert learned.shape == (60, 16)
    assert _reconstruction_error(learned, points) < 0.8 * _reconstruction_error(start, points)
    np.testing.assert_array_equal(learned, learned_proxies(points, 60, seed=0, steps=150))  # seeded


def wide_patches(n_rows: int = 3000, seed: int = 4) -> np.ndarray:
    """Rows as wide as Lite0's features, most of their spread in a few directions, like real patches."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 152))
    return (centers[rng.integers(0, 30, n_rows)] + rng.normal(scale=0.3, size=(n_rows, 152))).astype(np.float32)


@pytest.mark.parametrize("candidates", [1, 7, 256])
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_batched_greedy_picks_exactly_what_the_plain_loop_picks(points: np.ndarray, candidates: int, width: str,
                                                                monkeypatch) -> None:
    points = points if width == "narrow" else wide_patches()
    shares = spy_on_refreshes(monkeypatch)
    start = int(np.random.default_rng(0).integers(len(points)))
    # Algorithm 1 as written: add the row farthest from everything chosen, one at a time.
    nearest, plain = np.full(len(points), np.inf), [start]
    for _ in range(299):
        nearest = np.minimum(nearest, ((points - points[plain[-1]]) ** 2).sum(1))
        plain.append(int(nearest.argmax()))
    batched = greedy_coreset(points, 300, projection_dim=128, seed=0, candidates=candidates)
    assert batched[0] == plain[0] == start
    assert set(batched.tolist()) == set(plain)
    if width == "wide":  # the principal bound skipped rows on the way, and no pick changed
        assert min(shares) < 0.5


def spy_on_refreshes(monkeypatch) -> list[float]:
    """The share of rows each refresh of the greedy computed, recorded as it runs."""
    shares: list[float] = []
    update = sampling._update_min_squared

    def recorded(*args, **kwargs) -> float:
        shares.append(update(*args, **kwargs))
        return shares[-1]

    monkeypatch.setattr(sampling, "_update_min_squared", recorded)
    return shares


def test_principal_bound_is_a_lower_bound_and_a_close_one() -> None:
    rows = wide_patches()
    bound = PrincipalBound.of(rows)
    centres = np.arange(0, 3000, 60)
    squared = ((rows[:, None, :] - rows[None, centres, :]) ** 2).sum(-1).min(axis=1)
    lower = bound.lower_bounds(centres)(slice(0, len(rows)))
    assert np.all(lower <= squared + bound.slack)
    far = squared > 100
    assert np.median(lower[far] / squared[far]) > 0.9  # 12 strong directions of 152: the first 32 hold nearly all
    assert PrincipalBound.of(rows[:, :64]) is None  # too narrow to save a product


def test_a_bound_that_skips_nothing_is_dropped(monkeypatch) -> None:
    noise = np.random.default_rng(0).normal(size=(12_000, 128)).astype(np.float32)
    shares = spy_on_refreshes(monkeypatch)
    chosen = greedy_coreset(noise, 6_000, seed=0, candidates=128)
    assert len(np.unique(chosen)) == 6_000
    trial = PrincipalBound.trial_refreshes
    assert len(shares) > trial + 5
    assert max(shares[1:trial + 1]) > PrincipalBound.worth_it  # noise has no leading directions to bound by
    assert shares[trial + 1 :] == [1.0] * (len(shares) - trial - 1)


def test_projection_only_when_it_at_least_halves_the_dimension() -> None:
    from patchcore.core.sampling import random_projection

    narrow = torch.randn(10, 152)
    assert random_projection(narrow, 128, seed=0) is narrow  # no copy of the bank for 152 -> 128
    wide = torch.randn(10, 256)
    projected = random_projection(wide, 128, seed=0)
    assert projected.shape == (10, 128)
    # Johnson-Lindenstrauss: distances kept on average (here within 30 % for a pair, seeded).
    ratio = torch.dist(projected[0], projected[1]) / torch.dist(wide[0], wide[1])
    assert 0.7 < float(ratio) < 1.3


@pytest.mark.gpu
def test_cuda_coreset_covers_as_well_as_the_cpu_one() -> None:
    rng = np.random.default_rng(5)
    points = rng.normal(size=(20_000, 64)).astype(np.float32)
    on_cpu = greedy_coreset(points, 1_500, seed=0, device="cpu")
    on_gpu = greedy_coreset(points, 1_500, seed=0, device="cuda")
    assert len(set(on_gpu.tolist())) == 1_500 and on_gpu[0] == on_cpu[0]

    def covering_radius(chosen: np.ndarray) -> float:
        return float(torch.cdist(torch.from_numpy(points), torch.from_numpy(points[chosen])).min(dim=1).values.max())

    # Float rounding differs between the devices, so near-ties may go the other way: the picks then
    # differ, but the radius Algorithm 1 minimises may not grow by more than 1 %.
    assert covering_radius(on_gpu) <= 1.01 * covering_radius(on_cpu)


def test_extending_a_coreset_picks_what_the_plain_continued_loop_picks(points: np.ndarray) -> None:
    from patchcore.core.sampling import extend_coreset

    bank, new = points[:200], points[200:]
    to_bank = np.sqrt(((new[:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
    # The plain rule: pick the farthest new point from everything chosen, until all are within the radius.
    radius, nearest, expected = np.quantile(to_bank, 0.9), to_bank.copy(), []
    while nearest.max() > radius and len(expected) < 1000:
        best = int(nearest.argmax())
        expected.append(best)
        nearest = np.minimum(nearest, np.sqrt(((new - new[best]) ** 2).sum(-1)))
    picked = extend_coreset(new, to_bank, 1000, radius)
    assert 0 < len(picked) < 1000 and set(picked.tolist()) == set(expected)
    assert len(extend_coreset(new, to_bank, 10, radius)) == 10  # the cap holds
    assert len(extend_coreset(new, to_bank, 150, float(to_bank.max()))) == 0  # all covered: nothing added
