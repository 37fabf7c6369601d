"""What every detector shares: the estimator API (fit, predict, score_samples, decision_function), the network
pipeline built from the parameters, and the nominal calibration; saving and loading go through `manifest`."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from patchcore.backbones import (DEFAULT_BACKBONE, BackboneSpec, LoadedBackbone, get_backbone_spec, load_backbone,
                                 resolve_layers)
from patchcore.core.batches import BatchLoop, Picture
from patchcore.core.calibration import Calibrated, NominalCalibration, summarise
from patchcore.core.features import FeatureExtractor
from patchcore.core.manifest import load_detector, save_model
from patchcore.core.preprocessing import Preprocessor, choose_working_side, parse_image_size
from patchcore.core.defect_regions import Region, find_regions
from patchcore.core.references import GoodPatchFinder
from patchcore.core.replay import GraphReplay
from patchcore.core.runtime import RUNTIMES, OnnxRuntimeNetwork, runtime_problem
from patchcore.core.scoring import anomaly_maps, map_operators
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATES, Threshold
from patchcore.errors import ImageLoadError, PatchCoreWarning
from patchcore.io.images import ImageInput, category_validation_images, collect_images, read_image_size
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS
from patchcore.params import OneOf, Params, Range, check_params, comma_list, param


@dataclass
class Prediction:
    """One image's result: its anomaly score, its anomaly map at the image's own size, the decision, and the defect
    regions of the map.

    The decision fields come from the nominal good images' scores (`Detector.decision_threshold`) and are None
    for a model without them. `regions` are the map's connected parts above the pixel threshold set from the
    nominal good images' maps at the same false-alarm rate, highest first; None where that threshold is unknown
    (ensembles, models saved before it was kept, `score_samples`).
    """

    score: float
    anomaly_map: np.ndarray = field(repr=False)
    source: str | None = None
    threshold: float | None = None
    normalised_score: float | None = None
    is_anomalous: bool | None = None
    regions: list[Region] | None = None

    @property
    def decision(self) -> str | None:
        """'defect', 'good', or None without a threshold."""
        if self.is_anomalous is None:
            return None
        return "defect" if self.is_anomalous else "good"


@dataclass(frozen=True)
class DecisionRule:
    """How a score and a map become a decision: the image threshold, the pixel threshold of regions, and the
    smallest region that makes a defect (None: the image score alone decides)."""

    threshold: Threshold | None
    region_threshold: float | None = None
    typical_pixel: float | None = None
    min_defect_area: float | None = None
    pixel_size: float | None = None

    @classmethod
    def at(cls, calibration: NominalCalibration, rate: float, min_defect_area: float | None = None,
           pixel_size: float | None = None) -> DecisionRule:
        """The rule a calibration gives at false-alarm `rate`: its image threshold, its region threshold and the
        typical pixel its maps start from."""
        return cls(calibration.threshold(rate), calibration.region_threshold(rate),
                   calibration.map_range[0] if calibration.map_range else None, min_defect_area, pixel_size)

    def __call__(self, score: float, anomaly_map: np.ndarray, source: str | None, with_regions: bool) -> Prediction:
        regions = None
        if with_regions and self.region_threshold is not None:
            regions = find_regions(anomaly_map, self.region_threshold, self.typical_pixel, self.pixel_size)
        if self.threshold is None:
            return Prediction(score, anomaly_map, source, regions=regions)
        if self.min_defect_area is not None and regions is not None:
            is_anomalous = any(self._area(region) >= self.min_defect_area for region in regions)
        else:
            is_anomalous = self.threshold.is_anomalous(score)
        return Prediction(score, anomaly_map, source, self.threshold.value, self.threshold.normalise(score),
                          is_anomalous, regions)

    def _area(self, region: Region) -> float:
        return region.area if region.area_mm2 is None else region.area_mm2


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


# (image score, patch-score grid, the bank row nearest to each patch on the grid or None) of one picture.
ScoredPicture = tuple[float, torch.Tensor, "torch.Tensor | None"]
# Anomaly maps made at once, in pixels: batches small images' maps, keeps one large image's alone.
MAP_BATCH_PIXELS = 8_000_000
# Backbone arithmetic by name: None runs in float32, the others under autocast.
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _image_size_problem(size: int | tuple[int, int]) -> str | None:
    sizes = size if isinstance(size, tuple) else (size,)
    return None if min(sizes) >= 32 else "must be at least 32 pixels"


@dataclass(kw_only=True, eq=False, repr=False)
class Detector(Params, Calibrated, ABC):
    """Base of PatchCore and the baselines: `fit` on good images, then `predict` / `score_samples`.

    A scikit-learn-style estimator: every hyper-parameter is a declared field (`patchcore.params.param`,
    with the values it accepts), shared ones here, a method's own in its subclass, so `get_params`,
    `set_params` and `sklearn.base.clone` work and the CLI options are generated from the same
    declarations. Fitted state lives in attributes ending in `_`. A method says how features are
    extracted, how its fitted state is built from the training images, and how pictures are scored; the
    loop over images (`BatchLoop`), the nominal calibration (`NominalCalibration`) and the manifest
    (`patchcore.core.manifest`) are shared.

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
        check=_image_size_problem, parse=parse_image_size)
    center_crop: int | None = param(
        None, "Inspect only the central square of this many working pixels. The paper's MVTec protocol is "
              "--image-size 256x256 --center-crop 224; by default the whole image is inspected.", check=Range(32))
    bit_depth: int | None = param(
        None, "Bit depth of high-bit-depth images (e.g. 12 for 12-bit data in 16-bit files): every image is "
              "scaled by it, never by its own maximum. Default 16.", check=Range(8, 32))
    blur_sigma: float = param(4.0, "Gaussian blur of the anomaly map, in working pixels.", check=Range(0))
    holdout_fraction: float = param(
        0.1, "Share of good images held out to measure nominal scores (the threshold's basis).",
        check=Range(0, 1, high_open=True))
    false_alarm_rate: float = param(
        DEFAULT_FALSE_ALARM_RATE, "Share of held-out good images the good/defect threshold may flag.",
        check=FALSE_ALARM_RATES)
    min_defect_area: float | None = param(
        None, "Smallest defect region that makes an image a defect, in pixels of the original image (in mm^2 with "
              "pixel_size). Default: the image score alone decides.", check=Range(0, low_open=True))
    pixel_size: float | None = param(
        None, "Millimetres per pixel of the original images: region areas (and min_defect_area) in mm^2.",
        check=Range(0, low_open=True))
    batch_size: int = param(8, "Network inputs per forward pass, counted in 256 x 256 images (a 1024 x 1024 tile "
                                  "counts 16): memory stays bounded whatever the image size. On a CPU at most 2 "
                                  "(more ran slower per image).", check=Range(1))
    seed: int = param(0, "Seed of every random choice: hold-out split, projection, sampling.")
    device: str | None = param(None, "cpu or cuda (default: cuda when available).")
    precision: str = param(
        "float32", "Backbone arithmetic: float32, or bfloat16 / float16 autocast (for GPUs: tensor cores; the "
                   "memory bank, search and scores stay float32).", check=OneOf(tuple(PRECISIONS)))
    runtime: str = param(
        "torch", "Where the feature network runs: torch, or onnxruntime (CPU, float32; the network exported once per "
                 "input size and cached in ~/.cache/patchcore or $PATCHCORE_CACHE; same features, 1.4-2x faster at "
                 "224 px and 3.7-5x at a megapixel for Lite0 on 2 cores).", check=OneOf(RUNTIMES))
    cuda_graphs: bool = param(
        True, "On CUDA, replay the network from a CUDA graph per input shape (captured on its third batch): one "
              "launch per batch instead of one per layer, which is most of the time at batch 1.")
    loader_threads: int | None = param(
        None, "Threads decoding images ahead of the network. Default: up to 8 on CUDA, none on CPU, where the "
              "cores already run the network.", check=Range(0))
    progress: bool = param(False, "Show progress bars.", cli=False)

    # -- to implement -----------------------------------------------------------------------

    @abstractmethod
    def _make_extractor(self, backbone: LoadedBackbone, layers: tuple[str, ...]) -> FeatureExtractor: ...

    @abstractmethod
    def _fit_items(self, items: list[ImageInput], loop: BatchLoop, cross_fit: bool) -> NominalCalibration | None:
        """Build the fitted state from the training images, each decoded once by `loop`; with `cross_fit`, also
        return the nominal calibration of a cross-fit over them (None: the method cannot cross-fit)."""

    @abstractmethod
    def _score_pictures(self, pictures: list[Picture], loop: BatchLoop) -> list[ScoredPicture]:
        """(image score, patch-score grid over the network input, the bank row nearest to each patch or None)
        of each picture."""

    def _good_patch_finder(self) -> GoodPatchFinder | None:
        """What names the good training patch nearest to each region (None: this model cannot)."""
        return None

    @abstractmethod
    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What `save` writes beyond the shared entries: (manifest entries, arrays)."""

    @abstractmethod
    def _restore_state(self, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of `_fitted_state`, called by `load` after the pipeline is built."""

    def _tile_size(self) -> int | None:
        """Largest window the network sees at once; None (the baselines): always the whole image."""
        return None

    def _default_layers(self, spec: BackboneSpec) -> tuple[str, ...]:
        """Taps used when `layers` is None."""
        return spec.default_layers

    def _resolved_params(self) -> dict[str, Any]:
        """Parameters whose defaults were resolved at fit time, saved as resolved."""
        return {}

    # -- parameters and pipeline ------------------------------------------------------------

    def _check_params(self) -> None:
        get_backbone_spec(self.backbone)
        check_params(self)
        problem = runtime_problem(self.runtime, resolve_device(self.device), self.precision)
        if problem:  # like a bad device, before any image or weight is read
            raise ValueError(problem)

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
        if self.runtime == "onnxruntime":
            self._network = OnnxRuntimeNetwork(self.extractor_)
        else:
            self._network = GraphReplay(self.extractor_) if replay else self.extractor_
        self.preprocessor_ = Preprocessor(working_size, spec.mean, spec.std, self.center_crop, self._tile_size(),
                                          self.extractor_.grid_stride, spec.size_multiple)

    def _loop(self, skipped: list[str] | None = None) -> BatchLoop:
        """The loop over images with this model's preprocessing; `skipped` collects unreadable images instead of raising."""
        return BatchLoop(self.preprocessor_, self.device_, self.batch_size, self.bit_depth, self.loader_threads,
                         self.progress, skipped)

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, images: ImageInput | Sequence[ImageInput],
            validation: ImageInput | Sequence[ImageInput] | None = None, skip_bad: bool = False) -> "Detector":
        """Fit on good images: a folder (recursively; a dataset category's good training images), paths, PIL images
        or arrays.

        The threshold's nominal scores come from `validation` (independent good images) when given, or from the
        validation images of a dataset category given as `images` (MVTec AD 2's and LOCO's validation/good), else
        from held-out training images (`holdout_fraction`), else from the method's cross-fit.
        Each training image is decoded once. With `skip_bad`, unreadable images are skipped and listed in
        `skipped_images_` instead of stopping the fit.
        """
        self._check_params()
        items = collect_images(images, training=True)
        if validation is None:
            validation = category_validation_images(images)
        self.skipped_images_: list[str] = []
        skipped = self.skipped_images_ if skip_bad else None
        if validation is not None:
            train_items, holdout_items = items, collect_images(validation)
        else:
            train_items, holdout_items = self._split_holdout(items)
        train_items, sizes = self._readable_sizes(train_items, skipped)
        # The most common training size: what the exported graph takes, and what the manifest reports.
        self.training_size_ = max(set(sizes), key=sizes.count)
        self._build_pipeline(load_backbone(self.backbone, self.weights), self.image_size or choose_working_side(sizes))
        spread = self.preprocessor_.size_spread_warning(sizes)
        if spread is not None:
            warnings.warn(spread, PatchCoreWarning, stacklevel=2)
        n_skipped = len(self.skipped_images_)
        self.excluded_images_: list[str] = []
        calibration = self._fit_items(train_items, self._loop(skipped), cross_fit=not holdout_items)
        self.n_train_images_ = (len(train_items) - (len(self.skipped_images_) - n_skipped)
                                - len(self.excluded_images_))
        if holdout_items:
            source = "validation images" if validation is not None else "held-out training images"
            predictions = list(self._predict(holdout_items, with_maps=True, loop=self._loop(skipped)))
            calibration = NominalCalibration.of([p.score for p in predictions],
                                                [summarise(p.anomaly_map) for p in predictions], source,
                                                [p.source or f"held-out image {i}" for i, p in enumerate(predictions)])
        self.calibration_ = calibration or NominalCalibration.empty()  # no nominal images: no threshold
        self.change_ = {"action": "fit", "images": len(items)}
        return self

    @staticmethod
    def _readable_sizes(items: list[ImageInput], skipped: list[str] | None
                        ) -> tuple[list[ImageInput], list[tuple[int, int]]]:
        """The items whose headers read, with their (width, height); the others reported to `skipped` (None: raise)."""
        kept, sizes = [], []
        for item in items:
            try:
                sizes.append(read_image_size(item))
                kept.append(item)
            except ImageLoadError as error:
                if skipped is None:
                    raise
                skipped.append(str(error))
        if not kept:
            raise ImageLoadError(f"none of the {len(items)} training file(s) is a readable image")
        return kept, sizes

    def _split_holdout(self, items: list[ImageInput]) -> tuple[list[ImageInput], list[ImageInput]]:
        """Seeded split of good images into training images and held-out nominal images (none under 10)."""
        n_holdout = int(np.ceil(self.holdout_fraction * len(items))) if len(items) >= 10 else 0
        if n_holdout == 0:
            return items, []
        order = np.random.default_rng(self.seed).permutation(len(items))
        return [items[i] for i in sorted(order[n_holdout:])], [items[i] for i in sorted(order[:n_holdout])]

    # -- inference --------------------------------------------------------------------------

    def predict(self, images: ImageInput | Sequence[ImageInput], false_alarm_rate: float | None = None
                ) -> list[Prediction]:
        """Score images and locate anomalies: one `Prediction` (score, map at image size, decision at
        `false_alarm_rate`, default the model's own) per image."""
        return list(self.iter_predict(images, false_alarm_rate))

    def iter_predict(self, images: ImageInput | Sequence[ImageInput], false_alarm_rate: float | None = None
                     ) -> Iterator[Prediction]:
        """`predict` one batch at a time, so only a batch of maps is in memory."""
        self._check_fitted()
        return self._predict(collect_images(images), with_maps=True, rule=self.decision_rule(false_alarm_rate))

    def decision_rule(self, false_alarm_rate: float | None = None) -> DecisionRule:
        """How predictions are decided at `false_alarm_rate` (default: the model's own): the image threshold, the
        pixel threshold of defect regions, and the model's `min_defect_area`."""
        return DecisionRule.at(self.calibration_, self._rate(false_alarm_rate), self.min_defect_area, self.pixel_size)

    def score_samples(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image anomaly scores only (no maps). Higher = more anomalous, the opposite of scikit-learn's
        outlier detectors, whose `score_samples` is higher for normal samples."""
        self._check_fitted()
        return np.array([p.score for p in self._predict(collect_images(images), with_maps=False)], dtype=np.float64)

    def _predict(self, items: list[ImageInput], with_maps: bool, rule: DecisionRule = DecisionRule(None),
                 loop: BatchLoop | None = None) -> Iterator[Prediction]:
        loop = loop or self._loop()
        finder = self._good_patch_finder() if with_maps else None
        for positions, pictures in loop.chunks(items, "predict"):
            scores, grids, nearest = zip(*self._score_pictures(pictures, loop))
            sizes = [picture.size for picture in pictures]
            if with_maps:
                maps = self._maps(list(grids), sizes)
            else:
                maps = [np.empty((0, 0), dtype=np.float32)] * len(pictures)
            for position, score, amap, grid, rows, size in zip(positions, scores, maps, grids, nearest, sizes):
                item = items[position]
                source = str(item) if isinstance(item, (str, Path)) else None
                prediction = rule(float(score), amap, source, with_regions=with_maps)
                if finder is not None and rows is not None and prediction.regions:
                    prediction.regions = finder(prediction.regions, size, grid.cpu().numpy(), rows.cpu().numpy())
                yield prediction

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

    def _score_whole(self, pictures: list[Picture], loop: BatchLoop, score_batch) -> list[ScoredPicture]:
        """`_score_pictures` for methods that score whole network inputs a batch at a time with
        `score_batch(batch) -> (image scores (B,), patch-score grids (B, h, w))`."""
        results: list[ScoredPicture] = [None] * len(pictures)  # type: ignore[list-item]
        for entries, batch in loop.batches(pictures):
            scores, grids = score_batch(batch)
            for (i, _), score, grid in zip(entries, scores.tolist(), grids.cpu()):
                results[i] = (score, grid, None)
        return results

    def _training_batches(self, items: list[ImageInput], loop: BatchLoop) -> Iterator[torch.Tensor]:
        """Every network batch of the training images, for methods that need no tile bookkeeping."""
        for _, pictures in loop.chunks(items, "features"):
            for _, batch in loop.batches(pictures):
                yield batch

    @torch.inference_mode()
    def _network_maps(self, patch_scores: torch.Tensor, network_size: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) patch scores -> (B, H, W) blurred maps on the network input of (H, W) `network_size`."""
        return anomaly_maps(patch_scores, *map_operators(tuple(patch_scores.shape[1:]), network_size, self.blur_sigma,
                                                         patch_scores.device))

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> Path:
        """Write the fitted model as a directory (manifest.json + .npy arrays), atomically. A model already
        there is kept as `versions/N/` (the newest `keep_versions` of them); the manifest records the
        version and what changed since the last save (fit, update)."""
        self._check_fitted()
        return save_model(self, path, keep_versions)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, weights: str | Path | None = None,
             runtime: str | None = None) -> "Detector":
        """Load a saved model directory; `weights` overrides where the backbone weights are read from, `runtime`
        where the network runs."""
        return load_detector(cls, path, device, weights, runtime)
