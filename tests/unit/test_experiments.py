"""The experiment runner on a tiny MVTec-layout category built from real brick crops."""

import json
from pathlib import Path

import pytest

from patchcore.data.categories import load_category
from patchcore.evaluation.experiments import run_experiment


def test_reweighting_table_is_written_with_its_command(tiny_root: Path, tmp_path: Path) -> None:
    category = load_category(tiny_root, "brick")
    table = run_experiment("reweighting", [category], tmp_path, "patchcore experiment reweighting ROOT", log=lambda _: None)
    rows = {row["Eq. 7"]: row for row in table.rows}
    assert list(rows) == ["off", "b = 1", "b = 3", "b = 9"]
    assert rows["b = 1"]["brick"] == rows["off"]["brick"]  # b = 1 reads as no reweighting
    assert rows["b = 9"]["brick"] == 100.0  # pasted gravel squares are easy
    text = (tmp_path / "reweighting.md").read_text()
    assert "patchcore experiment reweighting ROOT" in text and "| b = 9 | 100.0 | 100.0 |" in text
    assert json.loads((tmp_path / "reweighting.json").read_text())["rows"][3]["mean"] == 100.0


@pytest.mark.slow
def test_a_smaller_coreset_uses_more_of_its_bank(tiny_root: Path, tmp_path: Path) -> None:
    table = run_experiment("bank-usage", [load_category(tiny_root, "brick")], tmp_path, "cmd", log=lambda _: None)
    usage = {row["bank"]: row["brick"] for row in table.rows}
    assert usage["100 %"] < usage["10 % coreset"] < usage["1 % coreset"] <= 100.0


def test_unknown_experiment_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown experiment 'fig9'"):
        run_experiment("fig9", [], tmp_path, "cmd")
