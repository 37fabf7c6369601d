"""Prediction outputs: the row a prediction becomes, the scores table on disk (CSV, JSON), and the check that an
output folder can be written."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from patchcore.core.detector import Prediction
from patchcore.errors import PatchCoreError
from patchcore.io.files import atomic_write_bytes

# scores.csv's columns; scores.json's rows also list every region.
PREDICTION_COLUMNS = ["image", "score", "normalised_score", "threshold", "decision", "n_regions", "largest_region_area"]


def prediction_row(prediction: Prediction) -> dict:
    """The one row a prediction becomes: in scores.csv and scores.json, on the terminal, from Ray actors, in the
    service's answer."""
    regions = prediction.regions
    return {"image": prediction.source, "score": prediction.score, "normalised_score": prediction.normalised_score,
            "threshold": prediction.threshold, "decision": prediction.decision,
            "n_regions": None if regions is None else len(regions),
            "largest_region_area": max((region.area for region in regions), default=None) if regions else None,
            "regions": None if regions is None else [region.as_dict() for region in regions]}


def check_writable_folder(folder: Path, what: str = "--out") -> None:
    """Fail at once, creating nothing, when `folder` cannot become a folder we write into: better
    before an hour of work than after it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PatchCoreError(f"{what} {folder}: is a file, not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PatchCoreError(f"{what} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PatchCoreError(f"{what} {folder}: {existing} is not writable")


class ScoresWriter:
    """`scores.csv` written row by row as images are scored (a killed run keeps every score it computed),
    then `scores.json` (atomically) once all rows are in. Nothing is created before the first row."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.rows: list[dict] = []
        self._file = None
        self._writer: csv.DictWriter | None = None

    def add(self, row: dict) -> None:
        if self._file is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.out_dir / "scores.csv", "w", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=PREDICTION_COLUMNS, extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()
        self.rows.append(row)

    def finish(self) -> None:
        """Close the CSV and write `scores.json` with every row."""
        self.close()
        atomic_write_bytes(self.out_dir / "scores.json", json.dumps(self.rows, indent=2).encode())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ScoresWriter:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def write_scores(rows: Sequence[dict], out_dir: Path) -> None:
    """`scores.csv` and `scores.json`, rows in the order given."""
    with ScoresWriter(out_dir) as writer:
        for row in rows:
            writer.add(row)
        writer.finish()
