"""A saved model's manifest: what `save` writes and loading reads (parameters, backbone, preprocessing, nominal
calibration, each method's own state), for single detectors and ensembles alike. The directory format itself
(atomic, versioned, checksummed) is `io.persistence`'s."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from patchcore import __version__
from patchcore.backbones import load_backbone
from patchcore.core.calibration import NominalCalibration
from patchcore.core.thresholds import Threshold
from patchcore.errors import ModelFileError
from patchcore.io.persistence import MANIFEST_CHECKSUM, load_directory, read_manifest, save_directory
from patchcore.search import NearestNeighbourIndex, describe_index, make_index

if TYPE_CHECKING:
    from patchcore.baselines.ensemble import Ensemble
    from patchcore.core.detector import Detector

NOMINAL_SCORES = "nominal_scores"
NOMINAL_MAP_PEAKS = "nominal_map_peaks"


def _json_param(value: Any) -> Any:
    """A parameter as JSON holds it: an index instance as its description, a path as text, an array as 'array'."""
    if isinstance(value, NearestNeighbourIndex):
        return describe_index(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return "array"
    return value


def _param_from_json(name: str, value: Any) -> Any:
    """Inverse of `_json_param`: an index description becomes the index, a saved size its tuple."""
    if isinstance(value, dict) and "kind" in value:
        return make_index(**value)
    if name == "image_size" and isinstance(value, list):
        return tuple(value)
    return value


def detector_form(model: Detector) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest, arrays) of a fitted detector, as `save` writes them and an ensemble writes each member."""
    state, arrays = model._fitted_state()
    preprocessor = model.preprocessor_
    params = {name: _json_param(value) for name, value in model.get_params(deep=False).items()}
    # `image_size` stays as asked (None: chosen from the training images); the size chosen is the preprocessing's.
    params.update(layers=list(model.layers_), device=None, progress=False, **model._resolved_params())
    manifest = {
        "method": model.method,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": params,
        "backbone": {
            "name": model.backbone,
            "weights_source": model.backbone_.weights_source,
            "weights_sha256": model.backbone_.weights_sha256,
        },
        "preprocessing": {
            "image_size": preprocessor.image_size,
            "center_crop": preprocessor.center_crop,
            "tile_size": preprocessor.tile_size,
            "grid_stride": preprocessor.stride,
            "mean": list(preprocessor.mean),
            "std": list(preprocessor.std),
        },
        "n_train_images": model.n_train_images_,
        "nominal": {"source": model.calibration_.source, "n_images": len(model.calibration_.scores),
                    "threshold": _threshold_record(model.decision_threshold()),
                    "warnings": model.nominal_warnings(), "names": list(model.calibration_.names)},
        "suspicious_training_images": model.suspicious_training_images_,
        "excluded_training_images": model.excluded_images_,
        "training_size": list(model.training_size_),
        "nominal_map_range": model.calibration_.map_range,
        **state,
    }
    return manifest, {NOMINAL_SCORES: model.calibration_.scores, NOMINAL_MAP_PEAKS: model.calibration_.peaks, **arrays}


def ensemble_form(ensemble: Ensemble) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest, arrays) of a fitted ensemble: each member's manifest inside, its arrays as `memberN.NAME`."""
    members, arrays = [], {NOMINAL_SCORES: ensemble.calibration_.scores, NOMINAL_MAP_PEAKS: ensemble.calibration_.peaks}
    for i, member in enumerate(ensemble.members):
        member_manifest, member_arrays = detector_form(member)
        members.append(member_manifest)
        arrays.update({f"member{i}.{name}": array for name, array in member_arrays.items()})
    manifest = {"method": ensemble.method, "package_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "false_alarm_rate": ensemble.false_alarm_rate, "members": members,
                "score_scales": [list(scale) for scale in ensemble.score_scales_], "map_scales": ensemble.map_scales_,
                "nominal_map_range": list(ensemble.calibration_.map_range), "n_train_images": ensemble.n_train_images_}
    return manifest, arrays


def save_model(model: Detector | Ensemble, path: str | Path, keep_versions: int) -> Path:
    """Write a fitted detector or ensemble as a model directory; the model then holds the manifest it saved
    (`manifest_`) and starts a new change record."""
    manifest, arrays = ensemble_form(model) if hasattr(model, "members") else detector_form(model)
    saved = save_directory(path, manifest, arrays, change=getattr(model, "change_", {"action": "fit"}),
                           keep_versions=keep_versions)
    model.manifest_ = read_manifest(saved)
    model.manifest_.pop(MANIFEST_CHECKSUM, None)
    model.change_ = {"action": "save"}  # saved: the next save records only what happens after it
    return saved


def member_arrays(arrays: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """The arrays of an ensemble's member `index`, by their own names."""
    prefix = f"member{index}."
    return {name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}


def load_detector(cls: type[Detector], path: str | Path, device: str | None = None,
                  weights: str | Path | None = None, runtime: str | None = None) -> Detector:
    """A saved model directory of method `cls`, verified."""
    manifest, arrays = load_directory(path)
    return restore_detector(cls, path, manifest, arrays, device, weights, runtime)


def restore_detector(cls: type[Detector], path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                     device: str | None, weights: str | Path | None, runtime: str | None = None) -> Detector:
    """Inverse of `detector_form`, given a verified directory's manifest and arrays; `weights` overrides where the
    backbone weights are read from, `runtime` where the network runs."""
    try:
        method = manifest["method"]
        params = {name: _param_from_json(name, value) for name, value in manifest["params"].items()}
        expected_digest = manifest["backbone"]["weights_sha256"]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"{path}: manifest lacks a required entry or holds a bad one ({error})") from error
    if method != cls.method:
        raise ModelFileError(f"{path}: holds a {method!r} model, not {cls.method!r}; use patchcore.load_model")
    if weights is not None:
        params["weights"] = str(weights)
    params.update(device=device, progress=False)
    if runtime is not None:
        params["runtime"] = runtime
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
    try:
        working_size = _param_from_json("image_size", manifest["preprocessing"]["image_size"])
    except (KeyError, TypeError) as error:
        raise ModelFileError(f"{path}: manifest lacks a required entry or holds a bad one ({error})") from error
    model._build_pipeline(backbone, working_size)
    try:
        model.n_train_images_ = manifest["n_train_images"]
        model.training_size_ = tuple(manifest["training_size"])
        model.calibration_ = _calibration(manifest, arrays, manifest["nominal"]["source"],
                                          manifest["nominal"].get("names", ()))
        model.excluded_images_ = list(manifest.get("excluded_training_images", []))
        model._restore_state(manifest, arrays)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: model files do not fit the manifest ({error})") from error
    model.manifest_ = manifest
    model.change_ = {"action": "save"}
    return model


def restore_ensemble(cls: type[Ensemble], path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                     members: list[Detector]) -> Ensemble:
    """Inverse of `ensemble_form`, given the members already restored."""
    try:
        ensemble = cls(members, false_alarm_rate=float(manifest["false_alarm_rate"]))
        ensemble.score_scales_ = [(float(mean), float(spread)) for mean, spread in manifest["score_scales"]]
        ensemble.map_scales_ = [float(scale) for scale in manifest["map_scales"]]
        ensemble.calibration_ = _calibration(manifest, arrays, ensemble.combined_source(members))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: ensemble manifest lacks a required entry or holds a bad one ({error})") from error
    if len(ensemble.score_scales_) != len(members) or len(ensemble.map_scales_) != len(members):
        raise ModelFileError(f"{path}: the ensemble's scales do not match its {len(members)} members")
    ensemble.manifest_ = manifest
    ensemble.change_ = {"action": "save"}
    return ensemble


def _calibration(manifest: dict[str, Any], arrays: dict[str, np.ndarray], source: str,
                 names: Sequence[str] = ()) -> NominalCalibration:
    map_range = manifest["nominal_map_range"]
    # Models saved before the peaks were kept have none: their predictions carry no regions.
    return NominalCalibration(arrays[NOMINAL_SCORES], tuple(map_range) if map_range else None, source,
                              arrays.get(NOMINAL_MAP_PEAKS, np.empty(0)), tuple(names))


def _threshold_record(threshold: Threshold | None) -> dict[str, Any] | None:
    """The threshold at the model's false-alarm rate as the manifest records it: for people, not read back."""
    if threshold is None:
        return None
    return {"value": threshold.value, "false_alarm_rate": threshold.false_alarm_rate, "method": threshold.method,
            "false_alarm_rate_interval": list(threshold.rate_interval) if threshold.rate_interval else None}
