"""The floor any ELPV result must beat: score each test cell by how dark it is (no learning at all).

    python benchmarks/elpv_darkness_floor.py data/offline
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.data.categories import load_category
from patchcore.evaluation.metrics import image_auroc


def darkness_auroc(root: Path, name: str) -> float:
    category = load_category(root, name)
    darkness = [255.0 - np.asarray(Image.open(s.image).convert("L"), dtype=np.float64).mean() for s in category.test_samples]
    labels = [int(s.is_anomalous) for s in category.test_samples]
    return image_auroc(np.array(labels), np.array(darkness))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in ("elpv_mono", "elpv_poly"):
        print(f"{name}: darkness image AUROC {darkness_auroc(root, name):.1f}")
