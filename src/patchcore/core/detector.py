"""What every detector shares: preprocessing, the predict loop, held-out nominal statistics, saving."""

from __future__ import annotations

import itertools
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from patchcore import __version__
from patchcore.backbones import (DEFAULT_BACKBONE, BackboneSpec, LoadedBackbone, get_backbone_spec, load_backbone,
                                 resolve_layers)
from patchcore.core.features import FeatureExtractor
from patchcore.core.preprocessing import Preprocessor, Tile, choose_working_side, parse_image_size
from patchcore.core.replay import GraphReplay
from patchcore.core.scoring import anomaly_maps, map_operators
from patchcore.core.thresholds import (DEFAULT_FALSE_ALARM_RATE, Threshold, nominal_score_warnings,
                                       threshold_at_false_alarm_rate, validate_false_alarm_rate)
from patchcore.errors import ModelFileError, NotFittedError
from patchcore.io.images import ImageInput, collect_images, load_image, read_image_size
from patchcore.io.persistence import (DEFAULT_KEEP_VERSIONS, MANIFEST_CHECKSUM, load_directory, read_manifest,
                                      save_directory)
from patchcore.params import comma_list, param


@dataclass
class Prediction:
    """One image's result: its anomaly score, its anomaly map at the image's own size, and the decision.

    The decision fields come from the held-out good images' scores (`Detector.decision_threshold`)
    and are None for a model fitted without held-out images.
    """

    score: float
    anomaly_map: np.ndarray = field(repr=False)
    source: str | None = None
    threshold: float | None = None
    normalised_score: float | None = None
    is_anomalous: bool | None = None

    @property
    def decision(self) -> str | None:
        """'defect', 'good', or None without a threshold."""
        if self.is_anomalous is None:
            return None
        return "defect" if self.is_anomalous else "good"

    @classmethod
    def decided(cls, score: float, anomaly_map: np.ndarray, source: str | None,
                threshold: Threshold | None) -> "Prediction":
        if threshold is None:
            return cls(score, anomaly_map, source)
        return cls(score, anomaly_map, source, threshold.value, threshold.normalise(score),
                   threshold.is_anomalous(score))


def resolve_device(device: str | None) -> torch.device:
    """The torch device a name means (None: CUDA when present), with its index: 'cuda' is 'cuda:N' of the
    current GPU, so it compares equal to the device tensors report."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:  # torch's message lists two dozen device types this package never runs on
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here; use --device cpu")
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


@dataclass(frozen=True)
class Picture:
    """A decoded image and its pixels at the network's working size (resized by whoever decoded it)."""

    image: Image.Image
    pixels: np.ndarray  # (H, W, 3) uint8 at the working size

    @property
    def size(self) -> tuple[int, int]:
        """The original image's (width, height)."""
        return self.image.size


# `batch_size` counts network inputs of this many pixels: larger inputs go in proportionally smaller batches.
BATCH_PIXELS = 256 * 256
# Decoded pictures held at once while predicting, in pixels: bounds memory on camera-sized images.
CHUNK_PIXELS = 48_000_000
# Anomaly maps made at once, in pixels: batches small images' maps, keeps one large image's alone.
MAP_BATCH_PIXELS = 8_000_000
# Network batches smaller than this go to a GPU from pageable memory: page-locking one took 0.2 ms, more than its copy.
PIN_BYTES = 2**20
# Backbone arithmetic by name: None runs in float32, the others under autocast.
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(kw_only=True, eq=False, repr=False)
class Detector(BaseEstimator, ABC):
    """Base of PatchCore and the baselines: `fit` on good images, then `predict` / `score_samples`.

    A scikit-learn-style estimator: every hyper-parameter is a declared field (`patchcore.params.param`),
    shared ones here, a method's own in its subclass, so `get_params`, `set_params` and
    `sklearn.base.clone` work and the CLI options are generated from the same declarations. Fitted
    state lives in attributes ending in `_`. Subclasses implement how features are extracted, how the
    fitted state is built from training images, and how a batch is scored.

    Scores follow the anomaly-detection convention: higher means more anomalous. (scikit-learn's
    outlier detectors, e.g. `IsolationForest.score_samples`, use the opposite sign.)
    """

    method: ClassVar[str]

    backbone: str = param(DEFAULT_BACKBONE, "Feature extractor by name (`patchcore backbones` lists them).")
    layers: Sequence[str] | None = param(
        None, "Feature taps: stage names or level1..level4, comma-separated (default: per backbone and method).",
        parse=comma_list)
    weights: str | Path | None = param(
        None, "Backbone weights: a state-dict file (.pth, .safetensors), 'torch-hub', or 'random' (tests only); "
              "default: the packaged ones.", parse=str)
    image_size: int | tuple[int, int] | None = param(
        None, "Working resolution: the longer side in pixels (aspect kept) or WIDTHxHEIGHT. Default: chosen from "
              "the training images: their native size, enlarged to 256 px on the longer side or shrunk to 4.2 "
              "megapixels (2048 x 2048).",
        parse=parse_image_size)
    center_crop: int | None = param(
        None, "Inspect only the central square of this many working pixels. The paper's MVTec protocol is "
              "--image-size 256x256 --center-crop 224; by default the whole image is inspected.")
    bit_depth: int | None = param(
        None, "Bit depth of high-bit-depth images (e.g. 12 for 12-bit data in 16-bit files): every image is "
              "scaled by it, never by its own maximum. Default 16.")
    blur_sigma: float = param(4.0, "Gaussian blur of the anomaly map, in working pixels.")
    holdout_fraction: float = param(
        0.1, "Share of good images held out to measure nominal scores (the threshold's basis).")
    false_alarm_rate: float = param(
        DEFAULT_FALSE_ALARM_RATE, "Share of held-out good images the good/defect threshold may flag.")
    batch_size: int = param(8, "Network inputs per forward pass, counted in 256 x 256 images (a 1024 x 1024 tile "
                                  "counts 16): memory stays bounded whatever the image size.")
    seed: int = param(0, "Seed of every random choice: hold-out split, projection, sampling.")
    device: str | None = param(None, "cpu or cuda (default: cuda when available).")
    precision: str = param(
        "float32", "Backbone arithmetic: float32, or bfloat16 / float16 autocast (for GPUs: tensor cores; the "
                   "memory bank, search and scores stay float32).")
    cuda_graphs: bool = param(
        True, "On CUDA, replay the network from a CUDA graph per input shape (captured on its third batch): one "
              "launch per batch instead of one per layer, which is most of the time at batch 1.")
    loader_threads: int | None = param(
        None, "Threads decoding images ahead of the network. Default: up to 8 on CUDA, none on CPU, where the "
              "cores already run the network.")
    progress: bool = param(False, "Show progress bars.", cli=False)

    # -- to implement -----------------------------------------------------------------------

    @abstractmethod
    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor: ...

    @abstractmethod
    def _fit_items(self, items: list[ImageInput], cross_fit: bool) -> None:
        """Build the fitted state from the training images (`cross_fit`: the nominal scores will come
        from a cross-fit over them, not from other images)."""

    @abstractmethod
    def _score_pictures(self, pictures: list[Picture]) -> list[tuple[float, torch.Tensor]]:
        """(image score, patch-score grid over the network input) of each picture."""

    def _tile_size(self) -> int | None:
        """Largest window the network sees at once; None (the baselines): always the whole image."""
        return None

    @abstractmethod
    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What `save` writes beyond the shared entries: (manifest entries, arrays)."""

    @abstractmethod
    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of `_fitted_state`, called by `load` after the pipeline is built."""

    def _validate_method_params(self) -> None:
        """Checks of the subclass's own hyper-parameters."""

    def _default_layers(self, spec: BackboneSpec) -> tuple[str, ...]:
        """Taps used when `layers` is None."""
        return spec.default_layers

    def _resolved_params(self) -> dict[str, Any]:
        """Parameters whose defaults were resolved at fit time, saved as resolved."""
        return {}

    @classmethod
    def _params_from_manifest(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Inverse of how `save` wrote parameters that JSON cannot hold as they are."""
        if isinstance(params.get("image_size"), list):
            params["image_size"] = tuple(params["image_size"])
        return params

    # -- parameters -------------------------------------------------------------------------

    def _check_params(self) -> None:
        get_backbone_spec(self.backbone)
        sizes = self.image_size if isinstance(self.image_size, tuple) else (self.image_size or 32,)
        if min(sizes) < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if self.center_crop is not None and self.center_crop < 32:
            raise ValueError(f"center_crop must be at least 32 pixels, got {self.center_crop}")
        resolve_device(self.device)  # a bad device fails before any image or weight is read
        if self.bit_depth is not None and not 8 <= self.bit_depth <= 32:
            raise ValueError(f"bit_depth must be between 8 and 32, got {self.bit_depth}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        validate_false_alarm_rate(self.false_alarm_rate)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.loader_threads is not None and self.loader_threads < 0:
            raise ValueError(f"loader_threads must be >= 0, got {self.loader_threads}")
        self._validate_method_params()

    def _build_pipeline(self, backbone: LoadedBackbone, working_size: int | tuple[int, int]) -> None:
        spec = backbone.spec
        self.device_ = resolve_device(self.device)
        self.backbone_ = backbone
        layers = resolve_layers(spec, self.layers) if self.layers else self._default_layers(spec)
        # Channels-last (NHWC) convolutions measured 1.7x faster for Lite0 on this CPU at batch 16.
        self.extractor_ = self._make_extractor(backbone, layers).to(self.device_, memory_format=torch.channels_last)
        self.extractor_.autocast_dtype = PRECISIONS[self.precision]
        self.layers_ = self.extractor_.layers
        replay = self.device_.type == "cuda" and self.cuda_graphs
        self._network = GraphReplay(self.extractor_) if replay else self.extractor_
        self.preprocessor_ = Preprocessor(working_size, spec.mean, spec.std, self.center_crop, self._tile_size(),
                                          self.extractor_.grid_stride)

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, images: ImageInput | Sequence[ImageInput],
            validation: ImageInput | Sequence[ImageInput] | None = None) -> "Detector":
        """Fit on good images: a folder (recursively; an MVTec category's train/good), paths, PIL images or arrays.

        The threshold's nominal scores come from `validation` (independent good images) when given,
        else from held-out training images (`holdout_fraction`), else from the method's cross-fit.
        """
        self._check_params()
        items = collect_images(images, training=True)
        if validation is not None:
            train_items, holdout_items = items, collect_images(validation)
        else:
            train_items, holdout_items = self._split_holdout(items)
        sizes = [read_image_size(item) for item in train_items]
        # The most common training size: what the exported graph takes, and what the manifest reports.
        self.training_size_ = max(set(sizes), key=sizes.count)
        self._build_pipeline(load_backbone(self.backbone, self.weights), self.image_size or choose_working_side(sizes))
        self._fit_items(train_items, cross_fit=not holdout_items)
        self.n_train_images_ = len(train_items)
        self._fit_nominal_statistics([])  # fitted from here on; no threshold until the nominal scores are in
        if holdout_items:
            self.nominal_source_ = "validation images" if validation is not None else "held-out training images"
            self._fit_nominal_statistics(list(self.iter_predict(holdout_items)))
        else:
            self.nominal_source_ = self._cross_fit_nominal(train_items)
        self.change_ = {"action": "fit", "images": len(items)}
        return self

    def _cross_fit_nominal(self, items: list[ImageInput]) -> str:
        """Nominal statistics without held-out images, if the method can (PatchCore's cross-fit);
        returns how they were made, or says that there are none."""
        return "none"

    def nominal_warnings(self) -> list[str]:
        """What limits the threshold: too few nominal scores for the false-alarm rate, or none at all."""
        self._check_fitted()
        return nominal_score_warnings(len(self.nominal_scores_), self.false_alarm_rate)

    def _split_holdout(self, items: list[ImageInput]) -> tuple[list[ImageInput], list[ImageInput]]:
        """Seeded split of good images into training images and held-out nominal images (none under 10)."""
        n_holdout = int(np.ceil(self.holdout_fraction * len(items))) if len(items) >= 10 else 0
        if n_holdout == 0:
            return items, []
        order = np.random.default_rng(self.seed).permutation(len(items))
        return [items[i] for i in sorted(order[n_holdout:])], [items[i] for i in sorted(order[:n_holdout])]

    def _fit_nominal_statistics(self, predictions: list[Prediction]) -> None:
        """Predictions of good images the model never saw: the scale for heatmaps, thresholds and ensembles."""
        self.nominal_scores_ = np.empty(0)
        self.nominal_map_range_ = None
        self._add_nominal_statistics(predictions)

    def _add_nominal_statistics(self, predictions: list[Prediction]) -> None:
        """More nominal predictions (an update's new images): their scores join the threshold's basis; the
        heatmap range keeps its typical pixel and takes the highest peak."""
        if not predictions:
            return
        scores = [prediction.score for prediction in predictions]
        medians = [float(np.nanmedian(prediction.anomaly_map)) for prediction in predictions]
        peaks = [float(np.nanmax(prediction.anomaly_map)) for prediction in predictions]
        if self.nominal_map_range_ is not None:
            peaks.append(self.nominal_map_range_[1])
            medians = [self.nominal_map_range_[0]]
        self.nominal_scores_ = np.concatenate([self.nominal_scores_, scores])
        self.nominal_map_range_ = (float(np.median(medians)), float(max(peaks)))

    def _picture_chunks(self, items: list[ImageInput], desc: str) -> Iterator[tuple[list[ImageInput], list[Picture]]]:
        """Items decoded and resized a chunk at a time (`batch_size` images, fewer when they are large),
        with one progress bar over all of them."""
        chunk: list[ImageInput] = []
        pictures: list[Picture] = []
        pixels = 0
        with tqdm(total=len(items), desc=desc, unit="image", disable=not self.progress, leave=False) as bar:
            for item, picture in zip(items, self._decoded(items)):
                chunk.append(item)
                pictures.append(picture)
                pixels += picture.size[0] * picture.size[1]
                if len(chunk) >= self.batch_size or pixels >= CHUNK_PIXELS:
                    yield chunk, pictures
                    bar.update(len(chunk))
                    chunk, pictures, pixels = [], [], 0
            if chunk:
                yield chunk, pictures
                bar.update(len(chunk))

    def _picture(self, item: ImageInput) -> Picture:
        image = load_image(item, self.bit_depth)
        return Picture(image, self.preprocessor_.network_pixels(image))

    def _decoded(self, items: list[ImageInput]) -> Iterator[Picture]:
        """The items decoded and resized to the working size in order, by `loader_threads` threads working
        a bounded way ahead (Pillow decodes and resizes without holding the GIL), or inline."""
        threads = self.loader_threads
        if threads is None:
            threads = min(8, os.cpu_count() or 1) if self.device_.type == "cuda" else 0
        if threads == 0:
            yield from (self._picture(item) for item in items)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="patchcore-decode") as pool:
            ahead: deque = deque()
            queued = iter(items)
            for item in itertools.islice(queued, 2 * threads + self.batch_size):
                ahead.append(pool.submit(self._picture, item))
            while ahead:
                picture = ahead.popleft().result()
                for item in itertools.islice(queued, 1):
                    ahead.append(pool.submit(self._picture, item))
                yield picture

    def _network_batches(self, pictures: list[Picture]) -> Iterator[tuple[list[tuple[int, Tile]], torch.Tensor]]:
        """The tiles of `pictures` (one per picture when it fits), equal sizes batched together on the device:
        ((picture index, tile) of each batch entry, normalised batch)."""
        preprocessor = self.preprocessor_
        pixels = [picture.pixels for picture in pictures]
        jobs = [(i, tile) for i, array in enumerate(pixels) for tile in preprocessor.tiles((array.shape[1], array.shape[0]))]
        jobs.sort(key=lambda job: (job[1].height, job[1].width))  # stable: equal sizes, in picture order
        for (height, width), group in itertools.groupby(jobs, key=lambda job: (job[1].height, job[1].width)):
            group = list(group)
            per_batch = max(1, self.batch_size * BATCH_PIXELS // (height * width))
            for start in range(0, len(group), per_batch):
                entries = group[start : start + per_batch]
                batch = torch.from_numpy(np.stack([pixels[i][t.y : t.y + t.height, t.x : t.x + t.width]
                                                   for i, t in entries]))
                # Page-locked, the copy runs without blocking this thread.
                if self.device_.type == "cuda" and batch.nbytes >= PIN_BYTES:
                    batch = batch.pin_memory()
                yield entries, preprocessor.normalise(batch.to(self.device_, non_blocking=True))

    def _training_batches(self, items: list[ImageInput]) -> Iterator[torch.Tensor]:
        """Every network batch of the training images, for methods that need no tile bookkeeping."""
        for _, pictures in self._picture_chunks(items, "features"):
            for _, batch in self._network_batches(pictures):
                yield batch

    def _score_whole(self, pictures: list[Picture], score_batch) -> list[tuple[float, torch.Tensor]]:
        """`_score_pictures` for methods that score whole network inputs a batch at a time with
        `score_batch(batch) -> (image scores (B,), patch-score grids (B, h, w))`."""
        results: list[tuple[float, torch.Tensor]] = [None] * len(pictures)  # type: ignore[list-item]
        for entries, batch in self._network_batches(pictures):
            scores, grids = score_batch(batch)
            for (i, _), score, grid in zip(entries, scores.tolist(), grids.cpu()):
                results[i] = (score, grid)
        return results

    def _maps(self, grids: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Pictures' patch-score grids as anomaly maps at their own (W, H) `sizes`. Pictures of one size are
        mapped together, up to MAP_BATCH_PIXELS at a time: one transfer from the device per batch, not per picture."""
        maps: list[np.ndarray] = [None] * len(grids)  # type: ignore[list-item]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            by_size.setdefault(size, []).append(i)
        for size, indices in by_size.items():
            per_batch = max(1, MAP_BATCH_PIXELS // (size[0] * size[1]))
            for start in range(0, len(indices), per_batch):
                batch = indices[start : start + per_batch]
                stacked = self.preprocessor_.to_original(torch.stack([grids[i] for i in batch]), size, self.blur_sigma)
                for i, amap in zip(batch, stacked):
                    maps[i] = amap
        return maps

    # -- inference --------------------------------------------------------------------------

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Score images and locate anomalies: one `Prediction` (score, map at image size) per image."""
        return list(self.iter_predict(images))

    def iter_predict(self, images: ImageInput | Sequence[ImageInput]) -> Iterator[Prediction]:
        """`predict` one batch at a time, so only a batch of maps is in memory."""
        return self._predict(images, with_maps=True)

    def score_samples(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image anomaly scores only (no maps). Higher = more anomalous, the opposite of scikit-learn's
        outlier detectors, whose `score_samples` is higher for normal samples."""
        return np.array([p.score for p in self._predict(images, with_maps=False)], dtype=np.float64)

    def _predict(self, images: ImageInput | Sequence[ImageInput], with_maps: bool) -> Iterator[Prediction]:
        self._check_fitted()
        items = collect_images(images)
        threshold = self.decision_threshold()
        for chunk, pictures in self._picture_chunks(items, "predict"):
            scores, grids = zip(*self._score_pictures(pictures))
            if with_maps:
                maps = self._maps(list(grids), [picture.size for picture in pictures])
            else:
                maps = [np.empty((0, 0), dtype=np.float32)] * len(pictures)
            for item, score, amap in zip(chunk, scores, maps):
                source = str(item) if isinstance(item, (str, Path)) else None
                yield Prediction.decided(float(score), amap, source, threshold)

    @torch.inference_mode()
    def _network_maps(self, patch_scores: torch.Tensor, network_size: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) patch scores -> (B, H, W) blurred maps on the network input of (H, W) `network_size`."""
        return anomaly_maps(patch_scores, *map_operators(tuple(patch_scores.shape[1:]), network_size, self.blur_sigma,
                                                         patch_scores.device))

    def decision_threshold(self) -> Threshold | None:
        """The threshold that flags `false_alarm_rate` of the held-out good images; None without them.

        Computed from the stored held-out scores each time, so changing `false_alarm_rate` on a fitted
        or loaded model takes effect at once. Test images never enter it.
        """
        self._check_fitted()
        return threshold_at_false_alarm_rate(self.nominal_scores_, self.false_alarm_rate)

    def _check_fitted(self) -> None:
        if not hasattr(self, "nominal_scores_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit(...) or load a saved model first"
            )

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> Path:
        """Write the fitted model as a directory (manifest.json + .npy arrays), atomically. A model already
        there is kept as `versions/N/` (the newest `keep_versions` of them); the manifest records the
        version and what changed since the last save (fit, update)."""
        self._check_fitted()
        manifest, arrays = self._saved_form()
        saved = save_directory(path, manifest, arrays, change=self.change_, keep_versions=keep_versions)
        self.manifest_ = read_manifest(saved)
        self.manifest_.pop(MANIFEST_CHECKSUM, None)
        self.change_ = {"action": "save"}  # saved: the next save records only what happens after it
        return saved

    def _saved_form(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(manifest, arrays) as `save` writes them, and as an `Ensemble` writes each member inside its own."""
        state, arrays = self._fitted_state()
        return self._manifest(state), {"nominal_scores": self.nominal_scores_, **arrays}

    def _manifest(self, state: dict[str, Any]) -> dict[str, Any]:
        """What the model is, as manifest.json records it: parameters, backbone, preprocessing, nominal statistics."""
        params = self.get_params(deep=False)
        params.update(layers=list(self.layers_), device=None, progress=False, image_size=self.preprocessor_.image_size,
                      **self._resolved_params())
        params["weights"] = None if self.weights is None else str(self.weights)
        return {
            "method": self.method,
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "params": params,
            "backbone": {
                "name": self.backbone,
                "weights_source": self.backbone_.weights_source,
                "weights_sha256": self.backbone_.weights_sha256,
            },
            "preprocessing": {
                "image_size": self.preprocessor_.image_size,
                "center_crop": self.preprocessor_.center_crop,
                "tile_size": self.preprocessor_.tile_size,
                "grid_stride": self.preprocessor_.stride,
                "mean": list(self.preprocessor_.mean),
                "std": list(self.preprocessor_.std),
            },
            "n_train_images": self.n_train_images_,
            "nominal": {"source": self.nominal_source_, "n_images": len(self.nominal_scores_),
                        "warnings": self.nominal_warnings()},
            "training_size": list(self.training_size_),
            "nominal_map_range": self.nominal_map_range_,
            **state,
        }

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, weights: str | Path | None = None) -> "Detector":
        """Load a saved model directory; `weights` overrides where the backbone weights are read from."""
        manifest, arrays = load_directory(path)
        return cls._from_manifest(path, manifest, arrays, device, weights)

    @classmethod
    def _from_manifest(
        cls,
        path: str | Path,
        manifest: dict[str, Any],
        arrays: dict[str, np.ndarray],
        device: str | None,
        weights: str | Path | None,
    ) -> "Detector":
        try:
            method = manifest["method"]
            params = cls._params_from_manifest(dict(manifest["params"]))
            expected_digest = manifest["backbone"]["weights_sha256"]
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: manifest lacks a required entry or holds a bad one ({error})") from error
        if method != cls.method:
            raise ModelFileError(f"{path}: holds a {method!r} model, not {cls.method!r}; use patchcore.load_model")
        if weights is not None:
            params["weights"] = str(weights)
        params.update(device=device, progress=False)
        try:
            model = cls(**params)
        except TypeError as error:
            raise ModelFileError(f"{path}: manifest parameters do not fit {cls.__name__} ({error})") from error
        model._check_params()
        backbone = load_backbone(model.backbone, model.weights)
        if backbone.weights_sha256 != expected_digest:
            raise ModelFileError(
                f"{path}: backbone weights {backbone.weights_source} differ from those the model was "
                f"fitted with (sha256 {expected_digest}); pass the original file with --weights"
            )
        model._build_pipeline(backbone, model.image_size)
        try:
            model.n_train_images_ = manifest["n_train_images"]
            model.nominal_source_ = manifest["nominal"]["source"]
            model.training_size_ = tuple(manifest["training_size"])
            model.nominal_scores_ = arrays["nominal_scores"]
            map_range = manifest["nominal_map_range"]
            model.nominal_map_range_ = tuple(map_range) if map_range else None
            model._restore_state(manifest, arrays)
            model.manifest_ = manifest
            model.change_ = {"action": "save"}
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: model files do not fit the manifest ({error})") from error
        return model
