import numpy as np
import pytest

from patchcore.search import ExactIndex, IVFPQIndex, make_index


def test_exact_index_returns_true_l2_distances() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, 24)).astype(np.float32)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    distances, indices = ExactIndex().fit(bank).search(queries, k=3)
    full = np.linalg.norm(queries[:, None, :] - bank[None, :, :], axis=2)
    expected = np.sort(full, axis=1)[:, :3]
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(indices[:, 0], full.argmin(axis=1))


def test_ivfpq_finds_most_true_neighbours() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=5, size=(50, 32))
    bank = (centers[rng.integers(0, 50, 20000)] + rng.normal(size=(20000, 32))).astype(np.float32)
    queries = bank[:200] + rng.normal(scale=0.1, size=(200, 32)).astype(np.float32)
    _, found = IVFPQIndex().fit(bank).search(queries, k=1)
    exact = np.linalg.norm(queries[:, None, :] - bank[None], axis=2).argmin(axis=1)
    assert (found[:, 0] == exact).mean() > 0.5


def test_hnsw_finds_nearly_all_true_neighbours_with_true_distances() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=5, size=(50, 32))
    bank = (centers[rng.integers(0, 50, 5000)] + rng.normal(size=(5000, 32))).astype(np.float32)
    queries = bank[:200] + rng.normal(scale=0.3, size=(200, 32)).astype(np.float32)
    distances, found = make_index("hnsw").fit(bank).search(queries, k=1)
    full = np.linalg.norm(queries[:, None, :] - bank[None], axis=2)
    assert (found[:, 0] == full.argmin(axis=1)).mean() > 0.95
    np.testing.assert_allclose(distances[:, 0], full[np.arange(200), found[:, 0]], rtol=1e-4)


def test_query_dimension_mismatch_is_refused() -> None:
    index = make_index("exact").fit(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.search(np.zeros((2, 5), dtype=np.float32))


@pytest.mark.parametrize("kind, dim", [("ivf", 32), ("ivf", 31), ("ivfflat", 32)])
def test_ivf_distances_are_exact_where_it_looks_and_never_below_the_true_nearest(kind: str, dim: int) -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=5, size=(50, dim))
    bank = (centers[rng.integers(0, 50, 20000)] + rng.normal(size=(20000, dim))).astype(np.float32)
    queries = bank[:300] + rng.normal(scale=0.3, size=(300, dim)).astype(np.float32)
    index = make_index(kind).fit(bank)
    assert index.n_lists_ == 71  # sqrt(20000) / 2 cells
    distances, found = index.search(queries, k=3)
    full = np.linalg.norm(queries[:, None, :] - bank[None], axis=2)
    rows = np.arange(300)[:, None]
    np.testing.assert_allclose(distances, full[rows, found], rtol=1e-4)
    assert (np.diff(distances, axis=1) >= 0).all()
    assert (distances[:, 0] >= full.min(axis=1) - 1e-4).all()
    assert (found[:, 0] == full.argmin(axis=1)).mean() > 0.95


def test_ivf_searches_small_banks_exactly() -> None:
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(300, 9)).astype(np.float32)
    queries = rng.normal(size=(50, 9)).astype(np.float32)
    index = make_index("ivf").fit(bank)
    distances, found = index.search(queries, k=2)
    full = np.linalg.norm(queries[:, None, :] - bank[None], axis=2)
    assert index.n_lists_ == 0
    np.testing.assert_array_equal(found, np.argsort(full, axis=1)[:, :2])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :2], rtol=1e-4)


def test_unknown_index_kind_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown index 'annoy'.*exact, ivf, ivfflat"):
        make_index("annoy")
