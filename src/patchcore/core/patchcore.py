"""The PatchCore estimator: a coreset memory bank of patch features, nearest-neighbour scoring (Eq. 5-7)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import clone

from patchcore.backbones import LoadedBackbone
from patchcore.core.detector import Detector
from patchcore.core.features import FeatureExtractor
from patchcore.core.sampling import SAMPLERS, coreset_size, greedy_coreset, learned_proxies, random_subsample
from patchcore.core.scoring import image_scores
from patchcore.io.images import ImageInput, collect_images
from patchcore.params import documented, int_or_raw, param
from patchcore.search import INDEX_KINDS, NearestNeighbourIndex, describe_index, make_index

RAW = "raw"

NO_SAMPLING = "none"


@documented
@dataclass(kw_only=True, eq=False, repr=False)
class PatchCore(Detector):
    """PatchCore anomaly detector (Roth et al., CVPR 2022).

    `fit` builds the memory bank of locally aware patch features from good images, subsampled by a
    greedy coreset; `predict` returns per-image scores, anomaly maps and decisions, `score_samples` the
    scores alone. Higher scores mean more anomalous.
    """

    method = "patchcore"

    feature_dim: int | Literal["raw"] | None = param(
        None, "Patch feature dimension, levels pooled to equal shares (the official code's merge); 'raw' "
              "concatenates every tapped channel (anomalib's). Default per backbone: raw for Lite0.", parse=int_or_raw)
    patch_size: int = param(3, "Neighbourhood p of Eq. 1 (odd).")
    patch_stride: int = param(1, "Stride s on the patch grid (Eq. 3).")
    sampler: str = param("greedy_coreset", "Memory-bank subsampling: greedy_coreset, random, learned_proxies "
                                           "(Eq. 8, with the softmax weight exp(-distance)) or none.")
    coreset_ratio: float = param(0.1, "Share of patches kept in the memory bank.")
    projection_dim: int = param(128, "Dimension of the random projection the greedy coreset searches in.")
    index: str | NearestNeighbourIndex = param(
        "ivf", "Nearest-neighbour search: ivf (codes in the visited cells, best candidates re-ranked exactly), "
               "exact, ivfflat, ivfpq, hnsw; in the API also an index instance, e.g. IVFIndex(n_probe=16).",
        parse=str)
    reweight: bool = param(True, "Eq. 7 score reweighting.")
    num_neighbours: int = param(9, "b of Eq. 7 (1: no reweighting).")

    def _validate_method_params(self) -> None:
        if self.sampler not in (*SAMPLERS, NO_SAMPLING):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {(*SAMPLERS, NO_SAMPLING)}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if not isinstance(self.index, NearestNeighbourIndex) and self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index {self.index!r}; choose from {', '.join(INDEX_KINDS)}")
        if not (self.feature_dim is None or self.feature_dim == RAW
                or (isinstance(self.feature_dim, int) and self.feature_dim >= 1)):
            raise ValueError(f"feature_dim must be a positive integer, 'raw' or None, got {self.feature_dim!r}")
        if self.num_neighbours < 1:
            raise ValueError(f"num_neighbours must be >= 1, got {self.num_neighbours}")

    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor:
        # "raw": every tapped channel concatenated (anomalib's merge); an int: levels pooled to equal
        # shares of it (the official code's); None: the backbone's default, one or the other.
        feature_dim = self._merge(backbone)
        return FeatureExtractor(backbone, layers, self.patch_size, None if feature_dim == RAW else feature_dim,
                                stride=self.patch_stride)

    def _merge(self, backbone: LoadedBackbone) -> int | Literal["raw"]:
        return self.feature_dim or backbone.spec.default_feature_dim

    # -- fitting ----------------------------------------------------------------------------

    def _fit_items(self, items: list[ImageInput]) -> None:
        started = time.perf_counter()
        patches = None
        for index, (batch, _, _) in enumerate(self._batches(items, "features")):
            grid = self.extractor_(batch).float().cpu().numpy()
            if patches is None:
                # One array filled batch by batch: the bank is never held twice (list + concatenation).
                self.feature_grid_, self.feature_dim_ = tuple(grid.shape[1:3]), grid.shape[-1]
                patches = np.empty((len(items), *grid.shape[1:]), dtype=np.float32)
            patches[index * self.batch_size : index * self.batch_size + len(grid)] = grid
        patches = patches.reshape(-1, self.feature_dim_)
        self.extraction_seconds_ = time.perf_counter() - started

        started = time.perf_counter()
        bank = self._subsample(patches)
        self.sampling_seconds_ = time.perf_counter() - started
        self.n_patches_seen_ = len(patches)
        self._set_bank(bank)

    def _set_bank(self, bank: np.ndarray, index_state: np.ndarray | None = None) -> None:
        """The bank and its search index: fitted, or restored from a saved state without training again."""
        self.memory_bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        index = clone(self.index) if isinstance(self.index, NearestNeighbourIndex) else make_index(self.index)
        if index_state is None:
            self.index_ = index.fit(self.memory_bank_)
        else:
            self.index_ = index.restore(index_state, self.memory_bank_.shape[1])

    def _subsample(self, patches: np.ndarray) -> np.ndarray:
        if self.sampler == NO_SAMPLING or self.coreset_ratio >= 1.0:
            return patches
        n_select = coreset_size(len(patches), self.coreset_ratio)
        if self.sampler == "random":
            return patches[random_subsample(len(patches), n_select, self.seed)]
        if self.sampler == "learned_proxies":
            return learned_proxies(patches, n_select, seed=self.seed, device=self.device_, progress=self.progress)
        selected = greedy_coreset(
            patches, n_select, self.projection_dim, self.seed, self.device_, progress=self.progress
        )
        return patches[selected]

    # -- inference --------------------------------------------------------------------------

    def patch_features(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Locally aware patch features of images, (n_images, h, w, feature_dim): what the bank holds."""
        self._check_fitted()
        items = collect_images(images)
        batches = self._batches(items, "features")
        return np.concatenate([self.extractor_(batch).float().cpu().numpy() for batch, _, _ in batches])

    @torch.inference_mode()  # the features are inference tensors: small ops on them cost less in this mode
    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.extractor_(batch).float().cpu()
        n_images, height, width, dim = features.shape
        patches = features.reshape(n_images, height * width, dim)
        distances, nearest = self.index_.search_tensor(patches.reshape(-1, dim), k=1)
        patch_scores = distances[:, 0].reshape(n_images, height * width)
        scores = image_scores(patches, patch_scores, nearest[:, 0].reshape(n_images, height * width),
                              torch.from_numpy(self.memory_bank_), self.index_.search_tensor,
                              self.num_neighbours, self.reweight)
        return scores, patch_scores.reshape(n_images, height, width)

    # -- persistence ------------------------------------------------------------------------

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"feature_grid": list(self.feature_grid_), "n_patches_seen": self.n_patches_seen_}
        arrays = {"memory_bank": self.memory_bank_}
        if self.index_.saves_state:  # trained indexes are saved, so loading never re-trains them
            arrays["search_index"] = self.index_.state()
        return state, arrays

    def _resolved_params(self) -> dict[str, Any]:
        index = self.index if isinstance(self.index, str) else describe_index(self.index)
        return {"feature_dim": RAW if self._merge(self.backbone_) == RAW else self.feature_dim_, "index": index}

    @classmethod
    def _params_from_manifest(cls, params: dict[str, Any]) -> dict[str, Any]:
        if isinstance(params.get("index"), dict):
            params["index"] = make_index(**params["index"])
        return params

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        bank = arrays["memory_bank"]
        self.feature_dim_ = self.extractor_.feature_dim
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim_:
            raise ValueError(f"memory bank shape {bank.shape} does not match feature_dim {self.feature_dim_}")
        self._set_bank(bank, arrays.get("search_index"))
        self.feature_grid_ = tuple(manifest["feature_grid"])
        self.n_patches_seen_ = manifest["n_patches_seen"]

