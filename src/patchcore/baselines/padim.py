"""PaDiM baseline (Defard et al. 2021): a Gaussian per patch position, Mahalanobis distance as the score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchcore.core.scoring import anomaly_map
from patchcore.backbones import DEFAULT_BACKBONE, BackboneSpec, LoadedBackbone
from patchcore.core.detector import Detector
from patchcore.core.features import FeatureExtractor
from patchcore.io.images import ImageInput
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE


class Padim(Detector):
    """Patch Distribution Modeling, with the same backbone as PatchCore.

    Features (`layers` None): the raw channels of hierarchy levels 1-3 concatenated on the level-1 grid (stride 4),
    of which a seeded random subset of `n_channels` is kept. Per grid position a Gaussian (mean,
    covariance + `covariance_epsilon` I) is fitted on the training images; the patch score is the
    Mahalanobis distance, the image score the maximum of the blurred map (as anomalib does).
    """

    method = "padim"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str] | None = None,
        weights: str | Path | None = None,
        n_channels: int = 100,
        covariance_epsilon: float = 0.01,
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
        self.n_channels = n_channels
        self.covariance_epsilon = covariance_epsilon
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
        if self.n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {self.n_channels}")
        if self.covariance_epsilon <= 0:
            raise ValueError(f"covariance_epsilon must be > 0, got {self.covariance_epsilon}")

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
        features = self.extractor_(batch)[..., torch.from_numpy(self.channels_).to(batch.device)]
        return features.flatten(1, 2).double().cpu()

    def _fit_items(self, items: list[ImageInput]) -> None:
        # Streaming sums: the covariance never needs every training feature in memory at once.
        count, total, outer = 0, None, None
        for batch, _, _ in self._batches(items, "features"):
            features = self._features(batch)
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

    def _score_batch(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        centred = self._features(batch).float() - torch.from_numpy(self.means_)
        inverse = torch.from_numpy(self.inverse_covariances_)
        squared = torch.einsum("bpc,pcd,bpd->bp", centred, inverse, centred).clamp_min(0)
        patch_scores = squared.sqrt().reshape(len(centred), *self.feature_grid_).numpy()
        image_scores = np.array(
            [anomaly_map(grid, self.image_size, self.blur_sigma).max() for grid in patch_scores], dtype=np.float64
        )
        return image_scores, patch_scores

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
