"""The detectors by name (`--method`), and loading a saved model whatever method it holds."""

from __future__ import annotations

from pathlib import Path

from patchcore.core.detector import Detector
from patchcore.core.patchcore import PatchCore
from patchcore.baselines.padim import Padim
from patchcore.errors import ModelFileError
from patchcore.io.persistence import load_directory
from patchcore.baselines.spade import Spade

METHODS: dict[str, type[Detector]] = {cls.method: cls for cls in (PatchCore, Spade, Padim)}


def get_method(name: str) -> type[Detector]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def load_model(path: str | Path, device: str | None = None, weights: str | Path | None = None) -> Detector:
    """Load a saved model directory of any method (PatchCore, SPADE, PaDiM)."""
    manifest, arrays = load_directory(path)
    if "method" not in manifest:
        raise ModelFileError(f"{path}: the manifest does not say which method the model is")
    method = get_method(manifest["method"])
    return method._from_manifest(path, manifest, arrays, device, weights)
