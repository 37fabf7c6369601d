"""The PatchCore estimator: a coreset memory bank of patch features, nearest-neighbour scoring (Eq. 5-7)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from patchcore.core.scoring import reweighting_factor
from patchcore.backbones import DEFAULT_BACKBONE, LoadedBackbone
from patchcore.core.detector import Detector
from patchcore.core.features import FeatureExtractor
from patchcore.io.images import ImageInput, expand_image_inputs
from patchcore.core.sampling import SAMPLERS, coreset_size, greedy_coreset, learned_proxies, random_subsample
from patchcore.search import INDEX_KINDS, make_index
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE

RAW = "raw"

NO_SAMPLING = "none"


class PatchCore(Detector):
    """PatchCore anomaly detector (Roth et al., CVPR 2022).

    All hyper-parameters are set here; `fit` builds the memory bank, `predict` returns per-image
    scores and anomaly maps, `score_samples` the scores alone. Higher scores mean more anomalous.
    """

    method = "patchcore"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str] | None = None,
        weights: str | Path | None = None,
        feature_dim: int | Literal["raw"] | None = None,
        patch_size: int = 3,
        patch_stride: int = 1,
        sampler: str = "greedy_coreset",
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        index: str = "ivf",
        reweight: bool = True,
        num_neighbours: int = 9,
        image_size: int = 224,
        resize: int | None = None,
        blur_sigma: float = 4.0,
        holdout_fraction: float = 0.1,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        batch_size: int = 8,
        seed: int = 0,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.feature_dim = feature_dim
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.sampler = sampler
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.index = index
        self.reweight = reweight
        self.num_neighbours = num_neighbours
        self.image_size = image_size
        self.resize = resize
        self.blur_sigma = blur_sigma
        self.holdout_fraction = holdout_fraction
        self.false_alarm_rate = false_alarm_rate
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.progress = progress

    def _validate_method_params(self) -> None:
        if self.sampler not in (*SAMPLERS, NO_SAMPLING):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {(*SAMPLERS, NO_SAMPLING)}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index {self.index!r}; choose from {INDEX_KINDS}")
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

    def _set_bank(self, bank: np.ndarray) -> None:
        self.memory_bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        self.index_ = make_index(self.index).fit(self.memory_bank_)

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
        items = expand_image_inputs(images)
        batches = self._batches(items, "features")
        return np.concatenate([self.extractor_(batch).float().cpu().numpy() for batch, _, _ in batches])

    def _score_batch(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        features = self.extractor_(batch).float().cpu()
        n_images, height, width, dim = features.shape
        queries = features.reshape(-1, dim).numpy()
        distances, nearest = self.index_.search(queries, k=1)
        patch_scores = distances[:, 0].reshape(n_images, height * width)
        nearest = nearest[:, 0].reshape(n_images, height * width)
        scores = self._image_scores(queries.reshape(n_images, height * width, dim), patch_scores, nearest)
        return scores, patch_scores.reshape(n_images, height, width)

    def _image_scores(self, patches: np.ndarray, patch_scores: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """Max patch distance s*, times the Eq. 7 weight when reweighting is on.

        With b = 1 the neighbourhood N_b(m*) is m* alone, the softmax is 1 and Eq. 7 would zero every
        score; as in anomalib, b = 1 means s* unweighted.
        """
        worst = patch_scores.argmax(axis=1)
        rows = np.arange(len(worst))
        max_scores = patch_scores[rows, worst].astype(np.float64)
        if not self.reweight or self.num_neighbours == 1:
            return max_scores
        anchors = nearest[rows, worst]
        # One faiss call for the batch: mixing numpy's BLAS threads with faiss's here measured
        # 2x slower per image at batch 1 (the two thread pools hand the cores back and forth).
        _, neighbours = self.index_.search(self.memory_bank_[anchors], k=self.num_neighbours)
        scores = np.empty(len(worst))
        for i, (patch, anchor) in enumerate(zip(patches[rows, worst], anchors)):
            support = _anchor_first(anchor, neighbours[i])
            to_support = np.linalg.norm(self.memory_bank_[support].astype(np.float64) - patch, axis=1)
            scores[i] = reweighting_factor(to_support[None])[0] * max_scores[i]
        return scores

    # -- persistence ------------------------------------------------------------------------

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"feature_grid": list(self.feature_grid_), "n_patches_seen": self.n_patches_seen_}
        return state, {"memory_bank": self.memory_bank_}

    def _resolved_params(self) -> dict[str, Any]:
        return {"feature_dim": RAW if self._merge(self.backbone_) == RAW else self.feature_dim_}

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        bank = arrays["memory_bank"]
        self.feature_dim_ = self.extractor_.feature_dim
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim_:
            raise ValueError(f"memory bank shape {bank.shape} does not match feature_dim {self.feature_dim_}")
        self._set_bank(bank)
        self.feature_grid_ = tuple(manifest["feature_grid"])
        self.n_patches_seen_ = manifest.get("n_patches_seen")


def _anchor_first(anchor: int, neighbours: np.ndarray) -> np.ndarray:
    """N_b(m*) with m* itself first, whatever order the search returned ties in."""
    others = neighbours[(neighbours != anchor) & (neighbours >= 0)][: len(neighbours) - 1]
    return np.concatenate([[anchor], others]).astype(np.int64)
