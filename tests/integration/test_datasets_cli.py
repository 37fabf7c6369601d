"""The dataset layouts from the command line: info before any fit, evaluate in any layout, fit taking only a
layout's good training images, and an MVTec AD 2 submission written and checked."""

import json
from pathlib import Path

import pytest

from patchcore.data.categories import load_category
from patchcore.data.convert import write_layout, write_mvtec_ad2
from tests.helpers import run_cli as run


def test_datasets_info_says_what_it_found_before_any_fit(tiny_root: Path, tmp_path: Path) -> None:
    write_layout(load_category(tiny_root, "brick"), tmp_path / "visa", "visa")
    result = run("datasets", "info", tmp_path / "visa")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:4] == [
        f"{tmp_path / 'visa'}: VisA layout, 1 category", f"brick at {tmp_path / 'visa' / 'brick'}",
        "  train: 12 good", "  test: 4 good, 4 defective (4 anomaly); masks for 4 of 4"]
    result = run("datasets", "info", tmp_path / "visa", "--layout", "btad")
    assert result.exit_code != 0 and "not in BTAD (BeanTech) layout" in result.output


@pytest.mark.slow
def test_fit_on_a_visa_object_and_evaluate_a_visa_root(tiny_root: Path, tmp_path: Path) -> None:
    write_layout(load_category(tiny_root, "brick"), tmp_path / "visa", "visa")
    result = run("fit", tmp_path / "visa" / "brick", "--out", tmp_path / "model", "--coreset-ratio", "0.25")
    assert result.exit_code == 0, result.output
    assert "a VisA category: fitting on its 12 good training images" in result.output
    assert "fitted on 12 images" in result.output
    result = run("fit", tmp_path / "visa" / "brick", "--out", tmp_path / "every", "--every-image",
                 "--coreset-ratio", "0.25")
    assert result.exit_code == 0 and "learning all 24 images under" in result.output  # 20 images and 4 masks
    result = run("evaluate", tmp_path / "visa", "--out", tmp_path / "evaluation", "--coreset-ratio", "0.25")
    assert result.exit_code == 0, result.output
    [row, _mean] = json.loads((tmp_path / "evaluation" / "results.json").read_text())["results"]
    assert row["category"] == "brick" and row["image_auroc"] == 100.0 and row["pro_05"] > 0
    assert "AU-PRO 0.05" in (tmp_path / "evaluation" / "results.md").read_text()


@pytest.mark.slow
def test_mvtec_ad2_submission_from_evaluate_and_from_predict(tiny_root: Path, tmp_path: Path) -> None:
    write_mvtec_ad2(load_category(tiny_root, "brick"), tmp_path / "ad2", validation_share=0.25)
    result = run("evaluate", tmp_path / "ad2", "--out", tmp_path / "evaluation", "--coreset-ratio", "0.25",
                 "--submission", tmp_path / "submission")
    assert result.exit_code == 0, result.output
    assert "brick: 9 train, 3 validation, 8 test images" in result.output
    assert "wrote 16 submission maps" in result.output
    text = (tmp_path / "evaluation" / "results.md").read_text()
    assert "As papers report it (AU-PRO 0.05, SegF1, I-AUROC; per cent)" in text
    assert "| category | AU-PRO 0.05 | SegF1 | I-AUROC |" in text and "\n| brick | " in text
    result = run("datasets", "check-submission", tmp_path / "submission", "--dataset", tmp_path / "ad2")
    assert result.exit_code == 0 and "ready to upload: 16 float16 maps" in result.output, result.output
    result = run("fit", tmp_path / "ad2" / "brick", "--out", tmp_path / "model", "--coreset-ratio", "0.25")
    assert "fitting on its 9 good training images; its 3 validation images set the threshold" in result.output
    result = run("predict", tmp_path / "model", tmp_path / "ad2" / "brick", "--submission", tmp_path / "again")
    assert result.exit_code == 0 and "brick: wrote 16 maps" in result.output, result.output
    result = run("datasets", "check-submission", tmp_path / "again")
    assert result.exit_code != 0 and "missing object folders: can, fabric" in result.output
