import pytest
import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from patchcore.apps.cli import main
from tests.helpers import small_texture_category


def test_evaluate_command_writes_table_json_and_maps(tmp_path: Path) -> None:
    small_texture_category(tmp_path / "data")
    result = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), "--save-maps",
         "--coreset-ratio", "0.1", "--holdout-fraction", "0"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "eval" / "results.json").read_text())
    brick, mean = document["results"]
    assert brick["category"] == "brick" and mean["category"] == "mean"
    assert brick["image_auroc"] == 100.0  # both pasted squares outscore the three good crops
    assert 90.0 < brick["pixel_auroc"] <= 100.0 and 50.0 < brick["pro"] <= 100.0
    assert brick["n_train"] == 10 and brick["n_test"] == 5
    assert brick["per_defect_image_auroc"] == {"paste": 100.0}
    assert "| brick | 100.0 |" in (tmp_path / "eval" / "results.md").read_text()
    assert len(list((tmp_path / "eval" / "maps" / "brick").rglob("*.png"))) == 5
    # Nothing held out: the threshold comes from PatchCore's cross-fit; the hindsight F1 is perfect since the AUROC is.
    assert brick["threshold"] > 0 and brick["test_recall"] is not None
    assert brick["f1_optimal"] == 100.0
    # Decisions, not only ranking: the recall any threshold reaches at the measured false alarms (both defects,
    # since they outscore every good crop), regions on both pasted squares, pixel F1 at the good images' threshold.
    assert brick["oracle_recall"] == 100.0 >= brick["test_recall"]
    assert brick["defects_with_region"] == 100.0 and brick["regions_per_good_image"] >= 0
    assert 10.0 < brick["segmentation_f1"] <= 100.0


def test_evaluate_an_ensemble_of_presets(tmp_path: Path) -> None:
    small_texture_category(tmp_path / "data")
    result = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), "--ensemble", "small-defects,default",
         "--image-size", "128", "--coreset-ratio", "0.1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "eval" / "results.json").read_text())
    brick = document["results"][0]
    assert brick["image_auroc"] == 100.0 and 90.0 < brick["pixel_auroc"] <= 100.0
    members = document["params"]["members"]
    assert len(members) == 2 and "patch_size=1" in members[0] and "patch_size" not in members[1]


@pytest.mark.slow
def test_evaluate_report_and_threshold_columns(tmp_path: Path) -> None:
    small_texture_category(tmp_path / "data")
    result = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), "--report", str(tmp_path / "report"),
         "--coreset-ratio", "0.1", "--holdout-fraction", "0.2", "--false-alarm-rate", "0.5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "eval" / "results.json").read_text())
    brick = document["results"][0]
    # One unit per kind of number, said in the file: the rate the threshold was set for in per cent, as the
    # measured rates are, under a name that is not the parameter's (a share: 0.5).
    assert brick["nominal_false_alarm_rate"] == 50.0 and document["params"]["false_alarm_rate"] == 0.5
    assert "nominal_false_alarm_rate" in document["units"]["per cent"] and "false_alarm_rate" not in brick
    assert brick["threshold"] > 0
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| threshold | nominal false alarms % |" in table and f"| {brick['threshold']:.3f} | 50.0 |" in table
    # The rates are counts over 3 good and 2 defective test images.
    assert brick["test_false_alarm_rate"] in (0.0, 100 / 3, 200 / 3, 100.0)
    assert brick["test_recall"] in (0.0, 50.0, 100.0)
    html = (tmp_path / "report" / "report.html").read_text()
    for title in ("Summary", "image ROC curve", "PRO curve", "score histogram", "Hardest images"):
        assert title in html
    assert html.count("<figure class=''>") == 5  # all 3 good and both defective test images (at most 4 + 4)
    assert "src='http" not in html and "src=\"http" not in html  # self-contained


def test_evaluate_checks_every_category_before_fitting(tmp_path: Path) -> None:
    small_texture_category(tmp_path / "data")
    (tmp_path / "data" / "brick" / "ground_truth" / "paste" / "1_mask.png").unlink()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "eval")])
    assert result.exit_code != 0 and "1_mask.png is missing" in result.output


def test_evaluate_names_a_category_without_good_test_images_and_an_out_that_is_a_file(tmp_path: Path) -> None:
    small_texture_category(tmp_path / "data")
    for image in (tmp_path / "data" / "brick" / "test" / "good").iterdir():
        image.unlink()
    (tmp_path / "data" / "brick" / "test" / "good").rmdir()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "eval")])
    assert result.exit_code != 0 and "brick/test/good: missing or empty" in result.output
    (tmp_path / "taken").write_text("a file")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "taken")])
    assert result.exit_code != 0 and result.output.strip() == f"Error: --out {tmp_path / 'taken'}: is a file, not a folder"


def test_report_gives_a_wide_strip_the_whole_row() -> None:
    import io

    from patchcore.evaluation.report import _shape

    def png(size: tuple[int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, format="PNG")
        return buffer.getvalue()

    assert _shape(png((3547, 296))) == "wide" and _shape(png((1254, 836))) == "" and _shape(png((300, 900))) == ""
