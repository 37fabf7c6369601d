"""PatchCore anomaly detection: fit on good images, score and locate defects.

The public API is at the package root::

    from patchcore import PatchCore, load_model

Exports load on first use, so `import patchcore` (and `patchcore --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PatchCore": "patchcore.core.patchcore",
    "Detector": "patchcore.core.detector",
    "Prediction": "patchcore.core.detector",
    "Spade": "patchcore.baselines.spade",
    "Padim": "patchcore.baselines.padim",
    "Ensemble": "patchcore.baselines.ensemble",
    "load_model": "patchcore.methods",
    "METHODS": "patchcore.methods",
    "PRESETS": "patchcore.methods",
    "make_index": "patchcore.search",
    "overlay_image": "patchcore.io.visualize",
    "PatchCoreError": "patchcore.errors",
    "ImageLoadError": "patchcore.errors",
    "DatasetError": "patchcore.errors",
    "WeightsError": "patchcore.errors",
    "ModelFileError": "patchcore.errors",
    "NotFittedError": "patchcore.errors",
    "PatchCoreWarning": "patchcore.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from patchcore.baselines.ensemble import Ensemble
    from patchcore.baselines.padim import Padim
    from patchcore.baselines.spade import Spade
    from patchcore.core.detector import Detector, Prediction
    from patchcore.core.patchcore import PatchCore
    from patchcore.errors import (DatasetError, ImageLoadError, ModelFileError, NotFittedError, PatchCoreError,
                                  PatchCoreWarning, WeightsError)
    from patchcore.methods import METHODS, PRESETS, load_model
    from patchcore.io.visualize import overlay_image
    from patchcore.search import make_index


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'patchcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
