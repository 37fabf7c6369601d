"""The PatchCore estimator: fit a memory bank on good images, score and locate anomalies, save and load."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from patchcore import __version__
from patchcore.anomaly_maps import anomaly_map, reweighting_factor
from patchcore.backbones import DEFAULT_BACKBONE, LoadedBackbone, get_backbone_spec, load_backbone
from patchcore.errors import ModelFileError, NotFittedError
from patchcore.features import FeatureExtractor
from patchcore.images import ImageInput, Preprocessor, expand_image_inputs, load_image
from patchcore.persistence import load_directory, save_directory
from patchcore.sampling import SAMPLERS, coreset_size, greedy_coreset, random_subsample
from patchcore.search import INDEX_KINDS, make_index

NO_SAMPLING = "none"


@dataclass
class Prediction:
    """One image's result: its anomaly score and its anomaly map at the image's own size."""

    score: float
    anomaly_map: np.ndarray
    source: str | None = None


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here; use --device cpu")
    return resolved


class PatchCore:
    """PatchCore anomaly detector (Roth et al., CVPR 2022).

    All hyper-parameters are set here; `fit` builds the memory bank, `predict` returns per-image
    scores and anomaly maps, `score_samples` the scores alone. Higher scores mean more anomalous.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: Sequence[str] | None = None,
        weights: str | Path | None = None,
        feature_dim: int | None = None,
        patch_size: int = 3,
        sampler: str = "greedy_coreset",
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        index: str = "exact",
        reweight: bool = True,
        num_neighbours: int = 9,
        image_size: int = 224,
        resize: int | None = None,
        blur_sigma: float = 4.0,
        holdout_fraction: float = 0.1,
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
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.progress = progress

    # -- parameters -------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        return {name: getattr(self, name) for name in names}

    def _validate_params(self) -> None:
        get_backbone_spec(self.backbone)
        if self.sampler not in (*SAMPLERS, NO_SAMPLING):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {(*SAMPLERS, NO_SAMPLING)}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index {self.index!r}; choose from {INDEX_KINDS}")
        if self.reweight and self.num_neighbours < 2:
            raise ValueError("num_neighbours must be >= 2 with reweighting (b = 1 makes every score 0)")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size})")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def _build_pipeline(self, backbone: LoadedBackbone) -> None:
        spec = backbone.spec
        self.device_ = resolve_device(self.device)
        self.layers_ = tuple(self.layers or spec.default_layers)
        self.feature_dim_ = int(self.feature_dim or spec.default_feature_dim)
        self.backbone_ = backbone
        self.extractor_ = FeatureExtractor(backbone, self.layers_, self.patch_size, self.feature_dim_)
        self.extractor_.to(self.device_)
        # Paper default: resize 256, crop 224; other sizes keep the same 256/224 ratio.
        resize = self.resize or round(self.image_size * 256 / 224)
        self.preprocessor_ = Preprocessor(resize, self.image_size, spec.mean, spec.std)

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, images: ImageInput | Sequence[ImageInput]) -> "PatchCore":
        """Build the memory bank from good images: a folder, a list of paths, PIL images or arrays."""
        self._validate_params()
        items = expand_image_inputs(images)
        train_items, holdout_items = self._split_holdout(items)
        self._build_pipeline(load_backbone(self.backbone, self.weights))
        started = time.perf_counter()
        grids = [features.numpy() for features, _, _ in self._extract(train_items, desc="features")]
        patches = np.concatenate(grids).reshape(-1, self.feature_dim_)
        self.feature_grid_ = tuple(grids[0].shape[1:3])
        self.extraction_seconds_ = time.perf_counter() - started

        started = time.perf_counter()
        selected = self._subsample(patches)
        self.memory_bank_ = np.ascontiguousarray(patches[selected], dtype=np.float32)
        self.sampling_seconds_ = time.perf_counter() - started
        self.n_train_images_ = len(train_items)
        self.n_patches_seen_ = len(patches)
        self.index_ = make_index(self.index).fit(self.memory_bank_)
        self._fit_nominal_statistics(holdout_items)
        return self

    def _split_holdout(self, items: list[ImageInput]) -> tuple[list[ImageInput], list[ImageInput]]:
        """Seeded split of good images into bank images and held-out nominal images (none under 10)."""
        n_holdout = int(np.ceil(self.holdout_fraction * len(items))) if len(items) >= 10 else 0
        if n_holdout == 0:
            return items, []
        order = np.random.default_rng(self.seed).permutation(len(items))
        return [items[i] for i in sorted(order[n_holdout:])], [items[i] for i in sorted(order[:n_holdout])]

    def _fit_nominal_statistics(self, holdout_items: list[ImageInput]) -> None:
        """Scores of good images the bank never saw: the scale for heatmaps and thresholds."""
        self.nominal_scores_ = np.empty(0)
        self.nominal_map_range_ = None
        if not holdout_items:
            return
        predictions = self.predict(holdout_items)
        self.nominal_scores_ = np.array([p.score for p in predictions])
        pixels = np.concatenate([p.anomaly_map.ravel() for p in predictions])
        self.nominal_map_range_ = (float(np.median(pixels)), float(pixels.max()))

    def _subsample(self, patches: np.ndarray) -> np.ndarray:
        if self.sampler == NO_SAMPLING or self.coreset_ratio >= 1.0:
            return np.arange(len(patches))
        n_select = coreset_size(len(patches), self.coreset_ratio)
        if self.sampler == "random":
            return random_subsample(len(patches), n_select, self.seed)
        return greedy_coreset(
            patches, n_select, self.projection_dim, self.seed, self.device_, progress=self.progress
        )

    def _extract(
        self, items: list[ImageInput], desc: str
    ) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]], list[str | None]]]:
        """Yield (patch features (B, h, w, D) on the CPU, original (W, H) sizes, sources) per batch."""
        batches = range(0, len(items), self.batch_size)
        for start in tqdm(batches, desc=desc, disable=not self.progress, unit="batch", leave=False):
            chunk = items[start : start + self.batch_size]
            pictures = [load_image(item) for item in chunk]
            batch = torch.stack([self.preprocessor_(picture) for picture in pictures]).to(self.device_)
            features = self.extractor_(batch).float().cpu()
            sources = [str(item) if isinstance(item, (str, Path)) else None for item in chunk]
            yield features, [picture.size for picture in pictures], sources

    # -- inference --------------------------------------------------------------------------

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Score images and locate anomalies: one `Prediction` (score, map at image size) per image."""
        return list(self.iter_predict(images))

    def iter_predict(self, images: ImageInput | Sequence[ImageInput]) -> Iterator[Prediction]:
        """`predict` one batch at a time, so only a batch of maps is in memory."""
        return self._predict(images, with_maps=True)

    def score_samples(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image anomaly scores only (no maps), higher = more anomalous."""
        return np.array([p.score for p in self._predict(images, with_maps=False)], dtype=np.float64)

    def _predict(self, images: ImageInput | Sequence[ImageInput], with_maps: bool) -> Iterator[Prediction]:
        self._check_fitted()
        items = expand_image_inputs(images)
        for features, sizes, sources in self._extract(items, desc="predict"):
            n_images, height, width, dim = features.shape
            queries = features.reshape(-1, dim).numpy()
            distances, nearest = self.index_.search(queries, k=1)
            patch_scores = distances[:, 0].reshape(n_images, height * width)
            nearest = nearest[:, 0].reshape(n_images, height * width)
            scores = self._image_scores(queries.reshape(n_images, height * width, dim), patch_scores, nearest)
            for i in range(n_images):
                amap = np.empty((0, 0), dtype=np.float32)
                if with_maps:
                    crop_map = anomaly_map(patch_scores[i].reshape(height, width), self.image_size, self.blur_sigma)
                    amap = self.preprocessor_.to_original_size(crop_map, sizes[i])
                yield Prediction(float(scores[i]), amap, sources[i])

    def _image_scores(self, patches: np.ndarray, patch_scores: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """Max patch distance s*, times the Eq. 7 weight when reweighting is on."""
        worst = patch_scores.argmax(axis=1)
        rows = np.arange(len(worst))
        max_scores = patch_scores[rows, worst].astype(np.float64)
        if not self.reweight:
            return max_scores
        _, neighbours = self.index_.search(self.memory_bank_[nearest[rows, worst]], k=self.num_neighbours)
        scores = np.empty(len(worst))
        for i, (patch, anchor) in enumerate(zip(patches[rows, worst], nearest[rows, worst])):
            support = _anchor_first(anchor, neighbours[i])
            to_support = np.linalg.norm(self.memory_bank_[support].astype(np.float64) - patch, axis=1)
            scores[i] = reweighting_factor(to_support[None])[0] * max_scores[i]
        return scores

    def _check_fitted(self) -> None:
        if not hasattr(self, "memory_bank_"):
            raise NotFittedError("this PatchCore is not fitted: call fit(...) or PatchCore.load(dir) first")

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a directory (manifest.json + memory_bank.npy), atomically."""
        self._check_fitted()
        params = self.get_params()
        params.update(layers=list(self.layers_), feature_dim=self.feature_dim_, device=None, progress=False)
        params["weights"] = None if self.weights is None else str(self.weights)
        manifest = {
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "params": params,
            "backbone": {
                "name": self.backbone,
                "weights_source": self.backbone_.weights_source,
                "weights_sha256": self.backbone_.weights_sha256,
            },
            "preprocessing": {
                "resize": self.preprocessor_.resize,
                "crop_size": self.preprocessor_.crop_size,
                "mean": list(self.preprocessor_.mean),
                "std": list(self.preprocessor_.std),
            },
            "feature_grid": list(self.feature_grid_),
            "n_train_images": self.n_train_images_,
            "n_patches_seen": self.n_patches_seen_,
            "nominal_map_range": self.nominal_map_range_,
        }
        arrays = {"memory_bank": self.memory_bank_, "nominal_scores": self.nominal_scores_}
        return save_directory(path, manifest, arrays)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, weights: str | Path | None = None) -> "PatchCore":
        """Load a saved model directory; `weights` overrides where the backbone weights are read from."""
        manifest, arrays = load_directory(path)
        try:
            params = dict(manifest["params"])
            expected_digest = manifest["backbone"]["weights_sha256"]
            bank = arrays["memory_bank"]
            feature_grid = tuple(manifest["feature_grid"])
        except (KeyError, TypeError) as error:
            raise ModelFileError(f"{path}: manifest lacks a required entry ({error})") from error
        if weights is not None:
            params["weights"] = str(weights)
        params.update(device=device, progress=False)
        model = cls(**params)
        model._validate_params()
        backbone = load_backbone(model.backbone, model.weights)
        if backbone.weights_sha256 != expected_digest:
            raise ModelFileError(
                f"{path}: backbone weights {backbone.weights_source} differ from those the model was "
                f"fitted with (sha256 {expected_digest}); pass the original file with --weights"
            )
        model._build_pipeline(backbone)
        if bank.ndim != 2 or bank.shape[1] != model.feature_dim_:
            raise ModelFileError(f"{path}: memory bank shape {bank.shape} does not match feature_dim")
        model.memory_bank_ = bank.astype(np.float32, copy=False)
        model.feature_grid_ = feature_grid
        model.n_train_images_ = manifest.get("n_train_images")
        model.n_patches_seen_ = manifest.get("n_patches_seen")
        model.nominal_scores_ = arrays.get("nominal_scores", np.empty(0))
        map_range = manifest.get("nominal_map_range")
        model.nominal_map_range_ = tuple(map_range) if map_range else None
        model.index_ = make_index(model.index).fit(model.memory_bank_)
        return model


def _anchor_first(anchor: int, neighbours: np.ndarray) -> np.ndarray:
    """N_b(m*) with m* itself first, whatever order the search returned ties in."""
    others = neighbours[(neighbours != anchor) & (neighbours >= 0)][: len(neighbours) - 1]
    return np.concatenate([[anchor], others]).astype(np.int64)
