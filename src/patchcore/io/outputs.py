"""Prediction outputs on disk: the scores table (CSV, JSON) and collision-free output names."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from patchcore.core.detector import Prediction
from patchcore.io.persistence import atomic_write_bytes

PREDICTION_COLUMNS = ["image", "score", "normalised_score", "threshold", "decision"]


def output_names(files: Sequence[Path]) -> list[str]:
    """Unique names for outputs: the path relative to the inputs' common folder, '/' -> '__'."""
    absolute = [file.absolute() for file in files]
    common = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    return [str(p.relative_to(common).with_suffix("")).replace(os.sep, "__") for p in absolute]


def prediction_row(prediction: Prediction) -> dict:
    return {"image": prediction.source, "score": prediction.score, "normalised_score": prediction.normalised_score,
            "threshold": prediction.threshold, "decision": prediction.decision}


def write_scores(rows: Sequence[dict], out_dir: Path) -> None:
    """`scores.csv` and `scores.json`, rows in the order given."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=PREDICTION_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "scores.csv", text.getvalue().encode())
    atomic_write_bytes(out_dir / "scores.json", json.dumps(list(rows), indent=2).encode())
