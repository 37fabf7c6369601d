"""SPADE baseline (Cohen & Hoshen 2020): k nearest training images by global feature, then pixel kNN in them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from patchcore.backbones import LoadedBackbone
from patchcore.core.batches import BatchLoop, Picture
from patchcore.core.detector import Detector, ScoredPicture
from patchcore.core.features import FeatureExtractor
from patchcore.io.images import ImageInput
from patchcore.search import ExactIndex
from patchcore.params import Range, documented, param


@documented
@dataclass(kw_only=True, eq=False, repr=False)
class Spade(Detector):
    """Semantic Pyramid Anomaly Detection, with the same backbone as PatchCore.

    Image score: mean distance of the image's globally pooled deepest feature (hierarchy level 4) to
    those of its `n_nearest_images` nearest training images. Pixel score: distance of each patch
    feature to its nearest patch feature anywhere in those images' feature maps. Patch features are
    the raw tapped channels without local averaging (SPADE has no Eq. 1); by default the same taps as
    PatchCore (levels 2 + 3, stride 8) so the two differ only in how they score. SPADE's own choice,
    levels 1-3 at stride 4, is `layers=("level1", "level2", "level3")`: about 16x slower.
    """

    method = "spade"

    n_nearest_images: int = param(50, "SPADE: nearest training images per test image (k).", check=Range(1))

    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor:
        return FeatureExtractor(backbone, layers, patch_size=1, feature_dim=None, global_layer=backbone.spec.levels[3])

    def _fit_items(self, items: list[ImageInput], loop: BatchLoop, cross_fit: bool) -> None:
        patch_grids, global_features = [], []
        for batch in self._training_batches(items, loop):
            patches, pooled = self.extractor_.forward_with_global(batch)
            patch_grids.append(patches.float().cpu().numpy())
            global_features.append(pooled.float().cpu().numpy())
        if len({grid.shape[1:] for grid in patch_grids}) > 1:
            raise ValueError("SPADE compares feature maps position by position: give every training image the same "
                             "working size with --image-size WIDTHxHEIGHT")
        self.train_patch_features_ = np.concatenate(patch_grids)
        self.train_global_features_ = np.concatenate(global_features)

    def _score_pictures(self, pictures: list[Picture], loop: BatchLoop) -> list[ScoredPicture]:
        return self._score_whole(pictures, loop, self._score_batch)

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, pooled = self.extractor_.forward_with_global(batch)
        patches = patches.float().cpu()
        train_global = torch.from_numpy(self.train_global_features_)
        k = min(self.n_nearest_images, len(train_global))
        image_distances, nearest_images = torch.cdist(pooled.float().cpu(), train_global).topk(k, largest=False)
        n_images, height, width, dim = patches.shape
        patch_scores = np.empty((n_images, height, width), dtype=np.float32)
        for i in range(n_images):
            gallery = self.train_patch_features_[nearest_images[i].numpy()].reshape(-1, dim)
            # faiss computes the (patches x gallery) distances in blocks: never the full matrix, which
            # at stride 4 (levels 1-3) would be 3,136 x 156,800 floats per image.
            distances, _ = ExactIndex().fit(gallery).search(patches[i].reshape(-1, dim).numpy(), k=1)
            patch_scores[i] = distances[:, 0].reshape(height, width)
        return image_distances.mean(dim=1).double(), torch.from_numpy(patch_scores)

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {
            "train_patch_features": self.train_patch_features_,
            "train_global_features": self.train_global_features_,
        }

    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.train_patch_features_ = arrays["train_patch_features"]
        self.train_global_features_ = arrays["train_global_features"]
        if self.train_patch_features_.shape[-1] != self.extractor_.feature_dim:
            raise ValueError(f"patch features of width {self.train_patch_features_.shape[-1]}, taps give {self.extractor_.feature_dim}")
