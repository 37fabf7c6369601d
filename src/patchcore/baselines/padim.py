"""PaDiM baseline (Defard et al. 2021): a Gaussian per patch position, Mahalanobis distance as the score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from patchcore.backbones import BackboneSpec, LoadedBackbone
from patchcore.core.batches import BatchLoop, Picture
from patchcore.core.detector import Detector, ScoredPicture
from patchcore.core.features import FeatureExtractor
from patchcore.io.images import ImageInput
from patchcore.params import Range, documented, param


@documented
@dataclass(kw_only=True, eq=False, repr=False)
class Padim(Detector):
    """Patch Distribution Modeling, with the same backbone as PatchCore.

    Features (`layers` None): the raw channels of hierarchy levels 1-3 concatenated on the level-1 grid (stride 4),
    of which a seeded random subset of `n_channels` is kept. Per grid position a Gaussian (mean,
    covariance + `covariance_epsilon` I) is fitted on the training images; the patch score is the
    Mahalanobis distance, the image score the maximum of the blurred map (as anomalib does).
    """

    method = "padim"

    n_channels: int = param(100, "PaDiM: random channels kept for the Gaussians.", check=Range(1))
    covariance_epsilon: float = param(0.01, "PaDiM: epsilon added to each covariance's diagonal.",
                                      check=Range(0, low_open=True))

    def _default_layers(self, spec: BackboneSpec) -> tuple[str, ...]:
        return spec.levels[:3]

    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor:
        extractor = FeatureExtractor(backbone, layers, patch_size=1, feature_dim=None)
        n_total = extractor.feature_dim
        n_kept = min(self.n_channels, n_total)
        self.channels_ = np.sort(np.random.default_rng(self.seed).choice(n_total, size=n_kept, replace=False))
        return extractor

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) float64 features of the kept channels."""
        features = self._network(batch)[..., torch.from_numpy(self.channels_).to(batch.device)]
        return features.flatten(1, 2).double().cpu()

    def _fit_items(self, items: list[ImageInput], loop: BatchLoop, cross_fit: bool) -> None:
        # Streaming sums: the covariance never needs every training feature in memory at once.
        count, total, outer = 0, None, None
        for batch in self._training_batches(items, loop):
            features = self._features(batch)
            if total is not None and features.shape[1:] != total.shape:
                raise ValueError("PaDiM fits a Gaussian per grid position: give every training image the same "
                                 "working size with --image-size WIDTHxHEIGHT")
            if total is None:
                self.feature_grid_ = tuple(self.extractor_(batch[:1]).shape[1:3])
                total = torch.zeros(features.shape[1:], dtype=torch.float64)
                outer = torch.zeros((*features.shape[1:], features.shape[2]), dtype=torch.float64)
            count += len(features)
            total += features.sum(dim=0)
            outer += torch.einsum("bpc,bpd->pcd", features, features)
        mean = total / count
        # One image has no spread: its covariance is 0 and only the epsilon term remains.
        covariance = (outer - count * torch.einsum("pc,pd->pcd", mean, mean)) / max(count - 1, 1)
        covariance += self.covariance_epsilon * torch.eye(covariance.shape[-1], dtype=torch.float64)
        self.means_ = mean.float().numpy()
        self.inverse_covariances_ = np.ascontiguousarray(torch.linalg.inv(covariance).float().numpy())

    def _score_pictures(self, pictures: list[Picture], loop: BatchLoop) -> list[ScoredPicture]:
        return self._score_whole(pictures, loop, self._score_batch)

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._features(batch).float()
        if features.shape[1] != self.means_.shape[0]:
            raise ValueError(f"PaDiM models a grid of {self.feature_grid_[0]} x {self.feature_grid_[1]} positions, this "
                             f"image gives another: fit and predict at one size with --image-size WIDTHxHEIGHT")
        centred = features - torch.from_numpy(self.means_)
        inverse = torch.from_numpy(self.inverse_covariances_)
        squared = torch.einsum("bpc,pcd,bpd->bp", centred, inverse, centred).clamp_min(0)
        patch_scores = squared.sqrt().reshape(len(centred), *self.feature_grid_)
        return self._network_maps(patch_scores, tuple(batch.shape[-2:])).amax(dim=(1, 2)), patch_scores

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"feature_grid": list(self.feature_grid_)}
        arrays = {"channels": self.channels_, "means": self.means_, "inverse_covariances": self.inverse_covariances_}
        return state, arrays

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.feature_grid_ = tuple(manifest["feature_grid"])
        self.channels_ = arrays["channels"]
        self.means_ = arrays["means"]
        self.inverse_covariances_ = arrays["inverse_covariances"]
        if self.channels_.max() >= self.extractor_.feature_dim:
            raise ValueError(f"channel index {self.channels_.max()} beyond the taps' {self.extractor_.feature_dim}")
