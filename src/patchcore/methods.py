"""The detectors by name (`--method`), settings presets by name (`--preset`), and loading a saved model whatever
method it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchcore.core.detector import Detector
from patchcore.core.patchcore import PatchCore
from patchcore.baselines.ensemble import Ensemble
from patchcore.baselines.padim import Padim
from patchcore.errors import ModelFileError
from patchcore.io.persistence import load_directory
from patchcore.params import declared
from patchcore.baselines.spade import Spade

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


def load_model(path: str | Path, device: str | None = None, weights: str | Path | None = None) -> Detector | Ensemble:
    """Load a saved model directory of any method (PatchCore, SPADE, PaDiM) or an `Ensemble` of them."""
    manifest, arrays = load_directory(path)
    if "method" not in manifest:
        raise ModelFileError(f"{path}: the manifest does not say which method the model is")
    if manifest["method"] == Ensemble.method:
        return Ensemble._from_manifest(path, manifest, arrays, device, weights)
    method = get_method(manifest["method"])
    return method._from_manifest(path, manifest, arrays, device, weights)
