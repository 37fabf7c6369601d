"""Nearest-neighbour search over the memory bank: one interface, exact (flat L2), IVF (re-ranked codes or flat), IVF-PQ and HNSW indexes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import faiss
import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from patchcore.params import declared, param

QUERY_CHUNK = 16384
# Below this many bank rows the flat search is cheap and the code indexes' k-means have too little to train on.
SMALL_BANK = 1024


@dataclass(kw_only=True, eq=False, repr=False)
class NearestNeighbourIndex(BaseEstimator, ABC):
    """Fit on the memory bank, then `search` returns true L2 distances (not squared) and indices.

    Settings are declared fields (scikit-learn style: `get_params`, `clone`); the fitted faiss index is
    `index_`, and `state()` / `restore()` carry it through a saved model without re-training.
    """

    kind: ClassVar[str]
    # Whether building the index costs enough (k-means, graph) to be worth saving with the model.
    saves_state: ClassVar[bool] = True

    def fit(self, bank: np.ndarray) -> "NearestNeighbourIndex":
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"memory bank must be a non-empty 2-D array, got shape {bank.shape}")
        self.dim_ = bank.shape[1]
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
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim_:
            raise ValueError(f"queries must have shape (n, {self.dim_}), got {queries.shape}")
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

    def search_tensor(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """`search` for the scoring module: torch in (any device), torch out on the same device."""
        distances, indices = self.search(queries.detach().float().cpu().numpy(), k)
        return torch.from_numpy(distances).to(queries.device), torch.from_numpy(indices).to(queries.device)

    def state(self) -> np.ndarray:
        """The fitted faiss index as bytes (faiss's own format, no pickle), to save with the model."""
        return faiss.serialize_index(self.index_)

    def restore(self, state: np.ndarray, dim: int) -> "NearestNeighbourIndex":
        """The index `state()` wrote, for `dim`-dimensional banks: as fitted, without training again."""
        self.index_ = faiss.deserialize_index(np.ascontiguousarray(state, dtype=np.uint8))
        self.dim_ = dim
        return self


@dataclass(kw_only=True, eq=False, repr=False)
class ExactIndex(NearestNeighbourIndex):
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


@dataclass(kw_only=True, eq=False, repr=False)
class IVFIndex(NearestNeighbourIndex):
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
    rerank_factor: int = param(8, "ivf: candidates per neighbour re-ranked by exact distance.")

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
class IVFFlatIndex(NearestNeighbourIndex):
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
class IVFPQIndex(NearestNeighbourIndex):
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
class HNSWIndex(NearestNeighbourIndex):
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


INDEXES: dict[str, type[NearestNeighbourIndex]] = {
    cls.kind: cls for cls in (ExactIndex, IVFIndex, IVFFlatIndex, IVFPQIndex, HNSWIndex)
}
INDEX_KINDS = tuple(INDEXES)


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
        query_norms = (queries * queries).sum(dim=1, keepdim=True)
        squared = (query_norms - 2.0 * queries @ self.bank.T + self.bank_squared_norms[None, :]).clamp_min(0.0)
        nearest_squared, indices = squared.topk(min(k, self.bank.shape[0]), dim=1, largest=False)
        return nearest_squared.sqrt(), indices
