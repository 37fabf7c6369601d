"""Nearest-neighbour search over the memory bank: one interface, exact (flat L2), IVF (re-ranked codes or flat), IVF-PQ and HNSW indexes in faiss, and exact search in torch on the model's device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import faiss
import numpy as np
import torch
from torch import nn

from patchcore.params import Params, declared, param

QUERY_CHUNK = 16384
# Below this many bank rows the flat search is cheap and the code indexes' k-means have too little to train on.
SMALL_BANK = 1024


@dataclass(kw_only=True, eq=False, repr=False)
class NearestNeighbourIndex(Params, ABC):
    """Fit on the memory bank, then `search` returns true L2 distances (not squared) and indices.

    Settings are declared fields (scikit-learn style: `get_params`, `clone`). Indexes whose building
    costs enough to be worth saving (`saves_state`) give their fitted form as bytes with `state()` and
    take it back with `restore()`, so a loaded model never trains them again.
    """

    kind: ClassVar[str]
    saves_state: ClassVar[bool] = False

    @abstractmethod
    def fit(self, bank: np.ndarray) -> "NearestNeighbourIndex": ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]: ...

    def search_tensor(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """`search` for the scoring module: torch in (any device), torch out on the same device."""
        distances, indices = self.search(queries.detach().float().cpu().numpy(), k)
        return torch.from_numpy(distances).to(queries.device), torch.from_numpy(indices).to(queries.device)

    def to(self, device: torch.device | str) -> "NearestNeighbourIndex":
        """Place the fitted index on `device`; host-memory indexes stay where they are (queries come to them)."""
        return self

    def _check_bank(self, bank: np.ndarray) -> np.ndarray:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"memory bank must be a non-empty 2-D array, got shape {bank.shape}")
        self.dim_ = bank.shape[1]
        return bank

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim_:
            raise ValueError(f"queries must have shape (n, {self.dim_}), got {queries.shape}")
        return queries


@dataclass(kw_only=True, eq=False, repr=False)
class FaissIndex(NearestNeighbourIndex):
    """An index held by faiss in host memory: the fitted faiss index is `index_`."""

    saves_state: ClassVar[bool] = True

    def fit(self, bank: np.ndarray) -> "FaissIndex":
        bank = self._check_bank(bank)
        self.index_ = self._build(bank)
        self._add(bank)
        return self

    @abstractmethod
    def _build(self, bank: np.ndarray) -> faiss.Index: ...

    def _add(self, bank: np.ndarray) -> None:
        self.index_.add(bank)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index_.search(queries, k)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        queries = self._check_queries(queries)
        k = min(k, self.index_.ntotal)
        distances = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        # Chunks bound faiss's per-query scratch memory on large batches.
        for start in range(0, len(queries), QUERY_CHUNK):
            stop = start + QUERY_CHUNK
            squared, found = self._search(queries[start:stop], k)
            distances[start:stop] = np.sqrt(np.maximum(squared, 0.0))
            indices[start:stop] = found
        return distances, indices

    def state(self) -> np.ndarray:
        """The fitted faiss index as bytes (faiss's own format, no pickle), to save with the model."""
        return faiss.serialize_index(self.index_)

    def restore(self, state: np.ndarray, dim: int) -> "FaissIndex":
        """The index `state()` wrote, for `dim`-dimensional banks: as fitted, without training again."""
        self.index_ = faiss.deserialize_index(np.ascontiguousarray(state, dtype=np.uint8))
        self.dim_ = dim
        return self


@dataclass(kw_only=True, eq=False, repr=False)
class ExactIndex(FaissIndex):
    """Brute-force L2 search (faiss IndexFlatL2)."""

    kind = "exact"
    saves_state = False  # building it only copies the bank

    def _build(self, bank: np.ndarray) -> faiss.Index:
        return faiss.IndexFlatL2(bank.shape[1])


def _ivf_lists(n_total: int) -> int:
    """sqrt(N)/2 k-means cells, but no fewer than the ~39 training points per cell faiss asks for."""
    return max(1, min(round(np.sqrt(n_total) / 2), n_total // 39))


_N_LISTS = "k-means cells of IVF indexes (default: sqrt(N)/2 for ivf and ivfflat, sqrt(N) for ivfpq)."
_N_PROBE = "Cells an IVF index visits per query."
_RERANK = "ivf, and torch with first_pass float16: candidates per neighbour re-ranked by exact distance (ivf 8, torch 4)."


@dataclass(kw_only=True, eq=False, repr=False)
class IVFIndex(FaissIndex):
    """Inverted lists of 4-bit codes scanned with SIMD, the best candidates then re-ranked by exact distance.

    Visits the `n_probe` nearest of sqrt(N)/2 k-means cells, scans them as product-quantised codes
    (faiss IVFPQFastScan, 4 bits per pair of dimensions) and keeps `rerank_factor` x k candidates,
    whose exact distances decide. Returned distances are exact; it can only miss a neighbour, which
    makes a patch score too high, never too low. On the offline banks it finds nearly as many true nearest
    neighbours as IVFFlat with the same cells (94 % against 96 % on grass), in a third of the time
    (docs/results.md).
    """

    kind = "ivf"
    n_lists: int | None = param(None, _N_LISTS)
    n_probe: int = param(8, _N_PROBE)
    rerank_factor: int = param(8, _RERANK)

    def _build(self, bank: np.ndarray) -> faiss.Index:
        n_total, dim = bank.shape
        if n_total < SMALL_BANK:
            self._padding, self.n_lists_ = 0, 0  # searched exactly
            return faiss.IndexFlatL2(dim)
        self._padding = dim % 2  # fast-scan codes need an even dimension; a zero column changes no distance
        n_lists = self.n_lists_ = self.n_lists or _ivf_lists(n_total)
        padded = dim + self._padding
        quantizer = faiss.IndexFlatL2(padded)
        codes = faiss.IndexIVFPQFastScan(quantizer, padded, n_lists, padded // 2, 4)
        # Codes of the vectors themselves, not of their offsets from the cell centre: one lookup table
        # per query instead of one per visited cell, 3x faster on the offline banks for about the
        # same neighbours after re-ranking.
        codes.by_residual = False
        codes.train(self._pad(bank))  # faiss k-means has fixed seeds: the same bank gives the same codes
        codes.nprobe = min(self.n_probe, n_lists)
        index = faiss.IndexRefineFlat(codes)
        index.k_factor = self.rerank_factor
        self._parts = (quantizer, codes)  # faiss does not own them: keep them alive with the index
        return index

    def _pad(self, vectors: np.ndarray) -> np.ndarray:
        if not self._padding:
            return vectors
        return np.ascontiguousarray(np.pad(vectors, ((0, 0), (0, self._padding))))

    def _add(self, bank: np.ndarray) -> None:
        self.index_.add(self._pad(bank))

    def restore(self, state: np.ndarray, dim: int) -> "IVFIndex":
        super().restore(state, dim)
        self._padding = self.index_.d - dim
        return self

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index_.search(self._pad(queries), k)


@dataclass(kw_only=True, eq=False, repr=False)
class IVFFlatIndex(FaissIndex):
    """Inverted lists over the exact vectors: searches the `n_probe` nearest of `n_lists` k-means cells.

    Distances to the vectors it visits are exact, like `IVFIndex`'s, which finds nearly the same
    neighbours faster by scanning codes first; kept as its simpler reference.
    """

    kind = "ivfflat"
    n_lists: int | None = param(None, _N_LISTS)
    n_probe: int = param(8, _N_PROBE)

    def _build(self, bank: np.ndarray) -> faiss.Index:
        n_total, dim = bank.shape
        n_lists = self.n_lists_ = self.n_lists or _ivf_lists(n_total)
        quantizer = faiss.IndexFlatL2(dim)
        return _trained(self, faiss.IndexIVFFlat(quantizer, dim, n_lists), quantizer, bank, n_lists)


@dataclass(kw_only=True, eq=False, repr=False)
class IVFPQIndex(FaissIndex):
    """Inverted lists over product-quantised codes: approximate, smaller and faster on large banks."""

    kind = "ivfpq"
    n_lists: int | None = param(None, _N_LISTS)
    n_subquantizers: int | None = param(None, "ivfpq: product-quantiser sub-vectors (default: about dim / 8).")
    n_probe: int = param(8, _N_PROBE)

    def _build(self, bank: np.ndarray) -> faiss.Index:
        n_total, dim = bank.shape
        # faiss wants ~39 training points per centroid and 256 per PQ code; shrink to what the bank allows.
        n_lists = self.n_lists or max(1, min(int(np.sqrt(n_total)), n_total // 39))
        n_subquantizers = self.n_subquantizers or _largest_divisor_at_most(dim, max(1, dim // 8))
        if dim % n_subquantizers:
            raise ValueError(f"n_subquantizers {n_subquantizers} must divide the feature dimension {dim}")
        bits = 8 if n_total >= 256 * 4 else max(1, int(np.log2(max(2, n_total // 4))))
        quantizer = faiss.IndexFlatL2(dim)
        return _trained(self, faiss.IndexIVFPQ(quantizer, dim, n_lists, n_subquantizers, bits), quantizer, bank, n_lists)


@dataclass(kw_only=True, eq=False, repr=False)
class HNSWIndex(FaissIndex):
    """Hierarchical navigable small-world graph over the exact vectors: approximate, no training."""

    kind = "hnsw"
    n_links: int = param(32, "hnsw: graph links per vector.")
    search_breadth: int = param(64, "hnsw: candidates kept while searching (efSearch).")

    def _build(self, bank: np.ndarray) -> faiss.Index:
        index = faiss.IndexHNSWFlat(bank.shape[1], self.n_links)
        index.hnsw.efSearch = self.search_breadth
        return index


def _trained(owner: IVFFlatIndex | IVFPQIndex, index: faiss.IndexIVF, quantizer: faiss.Index, bank: np.ndarray,
             n_lists: int) -> faiss.IndexIVF:
    """An inverted-list index trained on the bank, visiting `owner.n_probe` cells per query."""
    index.train(bank)  # faiss k-means has fixed seeds: the same bank gives the same cells
    index.nprobe = min(owner.n_probe, n_lists)
    owner._quantizer = quantizer  # faiss does not own it: keep it alive with the index
    return index


def _largest_divisor_at_most(number: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if number % d == 0)


@dataclass(kw_only=True, eq=False, repr=False)
class TorchSearchIndex(NearestNeighbourIndex, ABC):
    """An index held as torch tensors on the model's device: `search_tensor` is its search."""

    @abstractmethod
    def search_tensor(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]: ...

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = self.search_tensor(torch.from_numpy(self._check_queries(queries)), k)
        return distances.cpu().numpy(), indices.cpu().numpy()


@dataclass(kw_only=True, eq=False, repr=False)
class TorchIndex(TorchSearchIndex):
    """Exact search in torch with the bank on the model's device (a GPU's memory, when there is one).

    Queries are compared with the whole bank in chunks of matrix products (||q||^2 - 2 q.m + ||m||^2),
    the k best kept by top-k; their distances are then recomputed directly, so the returned distances
    are exact float32 L2, not the expanded form's rounding. `first_pass='float16'` runs the product in
    half precision (tensor cores) over `rerank_factor` x k candidates, re-ranked exactly.
    """

    kind = "torch"
    first_pass: str = param("float32", "torch: precision of the bank product, float32 or float16 (then re-ranked "
                                       "in float32).")
    rerank_factor: int = param(4, _RERANK)
    # Bytes of one chunk's (queries x bank) distance matrix: large enough to keep a GPU busy, small
    # enough for a CPU's cache-friendly working set and any GPU's memory.
    chunk_bytes: ClassVar[int] = 256 * 2**20

    def fit(self, bank: np.ndarray) -> "TorchIndex":
        if self.first_pass not in ("float32", "float16"):
            raise ValueError(f"first_pass must be float32 or float16, got {self.first_pass!r}")
        return self._place(torch.from_numpy(self._check_bank(bank)))

    def to(self, device: torch.device | str) -> "TorchIndex":
        return self._place(self.bank_.to(device))

    def _place(self, bank: torch.Tensor) -> "TorchIndex":
        self.bank_ = bank
        self.squared_norms_ = (bank.double() ** 2).sum(dim=1).float()
        self.half_bank_ = bank.half() if self.first_pass == "float16" else None
        return self

    @torch.inference_mode()
    def search_tensor(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        origin = queries.device
        queries = queries.detach().to(self.bank_.device, torch.float32)
        n_bank = len(self.bank_)
        k = min(k, n_bank)
        candidates = min(n_bank, k * self.rerank_factor) if self.half_bank_ is not None else k
        chunk = max(1, self.chunk_bytes // (4 * n_bank))
        found_distances, found_indices = [], []
        for start in range(0, len(queries), chunk):
            distances, indices = exact_nearest(queries[start : start + chunk], self.bank_, self.squared_norms_, k,
                                               candidates, self.half_bank_)
            found_distances.append(distances)
            found_indices.append(indices)
        return torch.cat(found_distances).to(origin), torch.cat(found_indices).to(origin)


@dataclass(kw_only=True, eq=False, repr=False)
class TorchIVFIndex(TorchSearchIndex):
    """Inverted lists in torch, on the model's device: for banks too large to compare every patch with.

    k-means (in torch, seeded) cuts the bank into `n_lists` cells, stored contiguously; a query visits its
    `n_probe` nearest cells, where the `TorchIndex` kernel finds its exact nearest rows. Queries are
    grouped by cell, so each cell is one matrix product however many queries visit it. Returned distances
    are exact; like `ivf`, it can only miss a neighbour (a patch then scores too high, never too low).
    """

    kind = "torch_ivf"
    n_lists: int | None = param(None, _N_LISTS)
    n_probe: int = param(8, _N_PROBE)
    kmeans_iterations: int = param(10, "torch_ivf: Lloyd iterations of the k-means that makes the cells.")

    def fit(self, bank: np.ndarray) -> "TorchIVFIndex":
        """Keep the bank; the cells are made where the index is first placed (`to`) or searched."""
        self._bank_host = torch.from_numpy(self._check_bank(bank))
        self.rows_ = None
        return self

    def to(self, device: torch.device | str) -> "TorchIVFIndex":
        if self.rows_ is None:
            self._make_cells(self._bank_host.to(device))
        else:
            for name in ("centroids_", "rows_", "row_norms_", "original_"):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def _make_cells(self, bank: torch.Tensor) -> None:
        n_total = len(bank)
        n_lists = self.n_lists_ = min(self.n_lists or _ivf_lists(n_total), n_total)
        generator = torch.Generator().manual_seed(0)  # fixed, as faiss's k-means: the same bank, the same cells
        centroids = bank[torch.randperm(n_total, generator=generator)[:n_lists].to(bank.device)].clone()
        for _ in range(self.kmeans_iterations):
            cells = self._nearest_cells(bank, centroids, 1)[:, 0]
            sums = torch.zeros_like(centroids).index_add_(0, cells, bank)
            counts = torch.bincount(cells, minlength=n_lists)
            filled = counts > 0  # an emptied cell keeps its old centre
            centroids[filled] = sums[filled] / counts[filled, None].float()
        cells = self._nearest_cells(bank, centroids, 1)[:, 0]
        order = torch.argsort(cells, stable=True)
        self.centroids_ = centroids
        self.rows_ = bank[order]  # the bank, cell after cell
        self.row_norms_ = (self.rows_.double() ** 2).sum(dim=1).float()
        self.original_ = order  # position in rows_ -> row of the bank
        self.offsets_ = [0, *torch.bincount(cells, minlength=n_lists).cumsum(0).tolist()]

    def _nearest_cells(self, queries: torch.Tensor, centroids: torch.Tensor, k: int) -> torch.Tensor:
        norms = (centroids.double() ** 2).sum(dim=1).float()
        chunk = max(1, TorchIndex.chunk_bytes // (4 * len(centroids)))
        return torch.cat([exact_nearest(queries[s : s + chunk], centroids, norms, k, k)[1]
                          for s in range(0, len(queries), chunk)])

    @torch.inference_mode()
    def search_tensor(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        origin = queries.device
        if self.rows_ is None:
            self.to(origin)
        queries = queries.detach().to(self.rows_.device, torch.float32)
        n_probe = min(self.n_probe, self.n_lists_)
        k = min(k, len(self.rows_))
        visits = self._nearest_cells(queries, self.centroids_, n_probe).reshape(-1)  # (Q * n_probe,)
        found_distances = torch.full((len(visits), k), torch.inf, device=queries.device)
        found_rows = torch.full((len(visits), k), -1, dtype=torch.int64, device=queries.device)
        by_cell = torch.argsort(visits, stable=True)
        starts = torch.searchsorted(visits[by_cell], torch.arange(self.n_lists_ + 1, device=queries.device)).tolist()
        for cell in range(self.n_lists_):
            first, last = self.offsets_[cell], self.offsets_[cell + 1]
            if starts[cell] == starts[cell + 1] or first == last:
                continue
            pairs = by_cell[starts[cell] : starts[cell + 1]]  # (query, probe) pairs that visit this cell
            kept = min(k, last - first)
            distances, rows = exact_nearest(queries[pairs // n_probe], self.rows_[first:last],
                                            self.row_norms_[first:last], kept, kept)
            found_distances[pairs, :kept] = distances
            found_rows[pairs, :kept] = rows + first
        distances, best = found_distances.reshape(len(queries), n_probe * k).topk(k, dim=1, largest=False)
        rows = found_rows.reshape(len(queries), n_probe * k).gather(1, best)
        indices = torch.where(rows >= 0, self.original_[rows.clamp_min(0)], rows)
        return distances.to(origin), indices.to(origin)


def exact_nearest(queries: torch.Tensor, bank: torch.Tensor, squared_norms: torch.Tensor, k: int, candidates: int,
                  half_bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows of each query and their exact L2 distances: the `candidates` best by
    ||m||^2 - 2 q.m (||q||^2 is the same along a row), in float16 when `half_bank` is given, then
    re-ranked by directly computed distances. The one search kernel of `TorchIndex` and the ONNX graph."""
    if half_bank is None:
        ranking = torch.addmm(squared_norms[None, :], queries, bank.T, alpha=-2.0)  # one fused pass
    else:
        ranking = squared_norms[None, :] - 2.0 * (queries.half() @ half_bank.T).float()
    # One candidate: a min-reduction reads the matrix once; top-k's radix select took 1.2x the product's time on a GPU.
    if candidates == 1:
        nearest = ranking.argmin(dim=1, keepdim=True)
        return (bank[nearest] - queries[:, None]).norm(dim=2), nearest
    nearest = ranking.topk(candidates, dim=1, largest=False).indices
    exact = (bank[nearest] - queries[:, None]).norm(dim=2)
    exact, order = exact.topk(k, dim=1, largest=False)
    return exact, nearest.gather(1, order)


AUTO_INDEX = "auto"
INDEXES: dict[str, type[NearestNeighbourIndex]] = {
    cls.kind: cls for cls in (ExactIndex, IVFIndex, IVFFlatIndex, IVFPQIndex, HNSWIndex, TorchIndex, TorchIVFIndex)
}
INDEX_KINDS = tuple(INDEXES)


def resolve_index_kind(kind: str, device: torch.device) -> str:
    """'auto' is exact torch search where the bank sits in a GPU's memory, the faiss IVF index on a CPU."""
    if kind != AUTO_INDEX:
        return kind
    return "torch" if device.type == "cuda" else "ivf"


def make_index(kind: str, **settings) -> NearestNeighbourIndex:
    """A new, unfitted index of that kind; `settings` are its declared fields (e.g. n_probe=16)."""
    if kind not in INDEXES:
        raise ValueError(f"unknown index {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    cls = INDEXES[kind]
    accepted = {f.name for f in declared(cls)}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ValueError(f"index {kind!r} has no setting {', '.join(unknown)}; its settings: "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    return cls(**settings)


def describe_index(index: NearestNeighbourIndex) -> dict:
    """JSON-ready {kind, settings...} of an index, the inverse of `make_index(**description)`."""
    return {"kind": index.kind, **index.get_params()}


class BankSearch(nn.Module):
    """Exact nearest-neighbour search in torch over a bank held as a buffer: the exported graph's search.

    The same contract as `NearestNeighbourIndex.search_tensor` (L2 distances and indices of the k
    nearest rows), in matrix products an ONNX runtime can run.
    """

    def __init__(self, bank: np.ndarray) -> None:
        super().__init__()
        bank_tensor = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        self.register_buffer("bank", bank_tensor)
        self.register_buffer("bank_squared_norms", (bank_tensor.double() ** 2).sum(dim=1).float())

    def forward(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.bank.shape[0])
        return exact_nearest(queries, self.bank, self.bank_squared_norms, k, k)
