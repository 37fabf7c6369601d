"""The detectors by name (`--method`), settings presets by name (`--preset`), building a model from named options
(what the command line and Ray are given), and loading a saved model whatever method it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functools import partial

import numpy as np

from patchcore.baselines.ensemble import Ensemble
from patchcore.baselines.padim import Padim
from patchcore.baselines.spade import Spade
from patchcore.core.detector import Detector
from patchcore.core.manifest import member_arrays, restore_detector, restore_ensemble
from patchcore.core.patchcore import PatchCore
from patchcore.errors import ModelFileError
from patchcore.io.persistence import load_directory
from patchcore.params import declared
from patchcore.search import make_index

# Options naming a search-index setting: `index_n_probe` is the index's `n_probe`.
INDEX_PREFIX = "index_"
# What `--ensemble` names for a member without a preset.
DEFAULT_MEMBER = "default"

METHODS: dict[str, type[Detector]] = {cls.method: cls for cls in (PatchCore, Spade, Padim)}

# Named sets of hyper-parameters, for `PatchCore(**PRESETS[name])` and `--preset NAME`; what is set
# explicitly besides wins. Each is the setting a measured table in docs/results.md stands on.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's MVTec protocol: squashed to 256 x 256, only the central 224 x 224 inspected.
    "paper": {"image_size": (256, 256), "center_crop": 224},
    # Defects of a few pixels at native resolution: no neighbourhood averaging (p = 1 of Eq. 1), the
    # stride-4 and stride-8 taps, a 1 % coreset. Small defects on 1200 x 900 modules: map maximum on the
    # defect 93 / 97 % (default 60 / 53 %); it loses on defects as wide as a 300 px cell.
    "small-defects": {"patch_size": 1, "layers": ("level1", "level2"), "coreset_ratio": 0.01},
    # AnomalyDINO's published settings (Damm et al., WACV 2025): DINOv2 ViT-S/14, the last block's normed patch
    # tokens, no neighbourhood averaging, cosine distance, images at 448 px, the whole bank. Its image score (the
    # mean of the top 1 % patch distances) is not reproduced: the score stays PatchCore's maximum. Needs the
    # official checkpoint (--weights FILE or torch-hub); not measured here (no weights in any registry).
    "anomalydino": {"backbone": "dinov2_vits14", "layers": ("norm",), "patch_size": 1, "distance": "cosine",
                    "image_size": 448, "sampler": "none", "reweight": False},
}


def get_method(name: str) -> type[Detector]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def preset_params(name: str, method: type[Detector] = PatchCore) -> dict[str, Any]:
    """The hyper-parameters a preset sets, checked against what `method` accepts."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    accepted = {field.name for field in declared(method)}
    unused = sorted(set(PRESETS[name]) - accepted)
    if unused:
        raise ValueError(f"preset {name!r} sets {', '.join(unused)}, which {method.method} does not have")
    return dict(PRESETS[name])


class UnusedOptionsError(ValueError):
    """Options given that the chosen method does not use."""

    def __init__(self, method: str, names: list[str]) -> None:
        super().__init__(f"not used by method {method}: {', '.join(names)}")
        self.method, self.names = method, names


def build_model(options: dict[str, Any]) -> Detector:
    """The detector named options describe: `method` (default patchcore), `preset`, any declared parameter of
    the method, and `index_SETTING` for the search index's settings. None means not given. An option the
    method does not use is an error, not silently ignored."""
    options = {name: value for name, value in options.items() if value is not None}
    method = get_method(options.pop("method", PatchCore.method))
    if "preset" in options:
        options = {**preset_params(options.pop("preset"), method), **options}
    index_settings = {name[len(INDEX_PREFIX):]: options.pop(name) for name in list(options)
                      if name.startswith(INDEX_PREFIX)}
    accepted = {field.name: field for field in declared(method)}
    unused = sorted(name for name in options if name not in accepted)
    if index_settings and "index" not in accepted:
        unused += [INDEX_PREFIX + name for name in index_settings]
    if unused:
        raise UnusedOptionsError(method.method, unused)
    if index_settings:
        options["index"] = make_index(options.get("index", accepted["index"].default), **index_settings)
    return method(**options)


def model_factory(options: dict[str, Any]) -> partial:
    """A picklable recipe for fresh models of `build_model(options)` (Ray ships it to workers), checked once here."""
    model = build_model(options)
    return partial(type(model), **model.get_params(deep=False))


def ensemble_factory(presets: list[str], options: dict[str, Any]) -> partial:
    """A picklable recipe for fresh ensembles, one member per preset name (DEFAULT_MEMBER: none), the other options
    shared."""
    if options.get("preset") is not None:
        raise ValueError("an ensemble names each member's preset: give no preset besides")
    members = [model_factory({**options, "preset": None if name == DEFAULT_MEMBER else name}) for name in presets]
    settings = {} if options.get("false_alarm_rate") is None else {"false_alarm_rate": options["false_alarm_rate"]}
    return partial(_new_ensemble, members, **settings)


def _new_ensemble(members: list[partial], **settings) -> Ensemble:
    return Ensemble([make() for make in members], **settings)


def load_model(path: str | Path, device: str | None = None, weights: str | Path | None = None,
               runtime: str | None = None) -> Detector | Ensemble:
    """Load a saved model directory of any method (PatchCore, SPADE, PaDiM) or an `Ensemble` of them; `device`,
    `weights` and `runtime` (where the network runs) override what was saved."""
    manifest, arrays = load_directory(path)
    return _restore(path, manifest, arrays, device, weights, runtime)


def _restore(path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], device: str | None,
             weights: str | Path | None, runtime: str | None = None) -> Detector | Ensemble:
    if not isinstance(manifest, dict) or "method" not in manifest:
        raise ModelFileError(f"{path}: the manifest does not say which method the model is")
    if manifest["method"] != Ensemble.method:
        try:
            method = get_method(manifest["method"])
        except ValueError as error:
            raise ModelFileError(f"{path}: {error}") from None
        return restore_detector(method, path, manifest, arrays, device, weights, runtime)
    try:
        members = [_restore(path, member, member_arrays(arrays, i), device, weights, runtime)
                   for i, member in enumerate(manifest["members"])]
    except (KeyError, TypeError) as error:
        raise ModelFileError(f"{path}: ensemble manifest lacks a required entry or holds a bad one ({error})") from error
    return restore_ensemble(Ensemble, path, manifest, arrays, members)
