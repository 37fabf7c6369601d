import numpy as np
import pytest
import torch

from patchcore.search import ExactIndex, IVFPQIndex, make_index, resolve_index_kind


def test_exact_index_returns_true_l2_distances() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, 24)).astype(np.float32)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    distances, indices = ExactIndex().fit(bank).search(queries, k=3)
    full = np.linalg.norm(queries[:, None, :] - bank[None, :, :], axis=2)
    expected = np.sort(full, axis=1)[:, :3]
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(indices[:, 0], full.argmin(axis=1))


@pytest.mark.slow
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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first_pass", ["float32", "float16"])
def test_torch_index_finds_what_faiss_exact_finds(device: str, first_pass: str) -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=3, size=(40, 48))
    bank = (centers[rng.integers(0, 40, 6000)] + rng.normal(size=(6000, 48))).astype(np.float32)
    queries = (bank[:700] + rng.normal(scale=0.5, size=(700, 48))).astype(np.float32)
    expected_distances, expected = ExactIndex().fit(bank).search(queries, k=5)
    index = make_index("torch", first_pass=first_pass).fit(bank).to(device)
    index.chunk_bytes = 4 * len(bank) * 64  # several chunks of 64 queries: the chunking is exercised too
    distances, found = index.search_tensor(torch.from_numpy(queries).to(device), k=5)
    assert distances.device.type == device and found.device.type == device
    agree = (found.cpu().numpy() == expected).mean()
    assert agree == 1.0 if first_pass == "float32" else agree > 0.99
    # Distances are recomputed directly, not read off ||q||^2 - 2 q.m + ||m||^2: exact float32 L2.
    direct = np.linalg.norm(queries[:, None, :] - bank[found.cpu().numpy()], axis=2)
    np.testing.assert_allclose(distances.cpu().numpy(), direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(distances.cpu().numpy()[:, 0], expected_distances[:, 0], rtol=1e-4, atol=1e-4)


def test_auto_index_is_torch_on_cuda_and_ivf_on_cpu() -> None:
    assert resolve_index_kind("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_index_kind("auto", torch.device("cpu")) == "ivf"
    assert resolve_index_kind("exact", torch.device("cuda", 0)) == "exact"


@pytest.mark.parametrize("device", DEVICES)
def test_torch_ivf_finds_nearly_all_true_neighbours_at_their_exact_distances(device: str) -> None:
    rng = np.random.default_rng(4)
    centers = rng.normal(scale=4, size=(60, 32))
    bank = (centers[rng.integers(0, 60, 20_000)] + rng.normal(size=(20_000, 32))).astype(np.float32)
    queries = (bank[:500] + rng.normal(scale=0.3, size=(500, 32))).astype(np.float32)
    _, expected = ExactIndex().fit(bank).search(queries, k=3)
    index = make_index("torch_ivf", n_probe=8).fit(bank).to(device)
    assert index.n_lists_ == 71  # sqrt(N) / 2 cells, as ivf
    distances, found = (t.cpu().numpy() for t in index.search_tensor(torch.from_numpy(queries).to(device), k=3))
    assert (found[:, 0] == expected[:, 0]).mean() > 0.95
    direct = np.linalg.norm(queries[:, None, :] - bank[found], axis=2)
    np.testing.assert_allclose(distances, direct, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)  # nearest first
    one_cell = make_index("torch_ivf", n_lists=1).fit(bank)  # one cell visited: the exact search
    np.testing.assert_array_equal(one_cell.search(queries, k=3)[1], expected)
