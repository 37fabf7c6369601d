import pytest
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import run_cli


run = run_cli


def test_fit_then_predict_writes_scores_and_heatmaps(image_folder: Path, defect_crop, tmp_path: Path) -> None:
    result = run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "manifest.json").is_file()
    assert "inspects 128 x 128 images at 256 x 256 px (enlarged 2.00x), 1 tile each" in result.output
    assert "tip:" not in result.output  # no preset suggested for small images
    # Without a terminal, a finished stage is one line, not a redrawn bar.
    assert "\r" not in result.output and re.search(r"^features: 12 images in \d+\.\d s$", result.output, re.M)
    query = tmp_path / "queries"
    (query / "a").mkdir(parents=True)
    (query / "b").mkdir()
    Image.fromarray(defect_crop[0]).save(query / "a" / "x.png")
    Image.fromarray(np.asarray(Image.open(next(image_folder.glob("*.png"))))).save(query / "b" / "x.png")
    Image.fromarray(np.asarray(Image.open(next(image_folder.glob("*.png"))))).save(query / "b" / "x.tif")
    result = run("predict", tmp_path / "model", query, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert len(rows) == 3 and rows[0]["score"] > rows[1]["score"]  # a/x.png holds the defect
    heatmaps = sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir())
    # Same file names in two folders, or names that differ only by extension, do not collide.
    assert heatmaps == ["a__x.png", "b__x_png.png", "b__x_tif.png"]
    assert "and 3 heatmaps in" in result.output
    assert Image.open(tmp_path / "out" / "heatmaps" / "a__x.png").size == (128, 128)
    assert (tmp_path / "out" / "scores.csv").read_text().startswith("image,score")


def test_fit_on_empty_folder_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("fit", tmp_path / "empty", "--out", tmp_path / "model")
    assert result.exit_code != 0
    assert "empty: no image files" in result.output
    assert not (tmp_path / "model").exists()


def copy_images(source: Path, folder: Path, count: int = 3) -> Path:
    """The first `count` PNGs of `source`, copied into a new `folder`."""
    folder.mkdir()
    for path in sorted(source.glob("*.png"))[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_fit_on_a_folder_with_a_corrupt_image_names_it(image_folder: Path, tmp_path: Path) -> None:
    folder = copy_images(image_folder, tmp_path / "data")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run("fit", folder, "--out", tmp_path / "model")
    assert result.exit_code != 0
    assert "zz_broken.png: not a readable image" in result.output
    assert not (tmp_path / "model").exists()


def test_predict_with_a_broken_model_dir_names_the_missing_file(image_folder: Path, tmp_path: Path) -> None:
    assert run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05").exit_code == 0
    (tmp_path / "model" / "memory_bank.npy").unlink()
    result = run("predict", tmp_path / "model", image_folder, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "memory_bank.npy: missing" in result.output
    assert not (tmp_path / "out").exists()


def test_predict_on_a_truncated_png_writes_nothing(image_folder: Path, tmp_path: Path) -> None:
    assert run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05").exit_code == 0
    broken = tmp_path / "cut.png"
    broken.write_bytes(next(image_folder.glob("*.png")).read_bytes()[:200])
    result = run("predict", tmp_path / "model", broken, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "cut.png" in result.output
    assert not (tmp_path / "out").exists()


def test_every_command_has_help() -> None:
    for command in (["--help"], ["fit", "--help"], ["predict", "--help"], ["demo", "--help"],
                    ["datasets", "build-offline", "--help"], ["backbones"]):
        result = run(*command)
        assert result.exit_code == 0 and result.output.strip(), command


def test_fit_and_predict_with_a_baseline_method(image_folder: Path, defect_crop, tmp_path: Path) -> None:
    result = run("fit", image_folder, "--out", tmp_path / "padim", "--method", "padim", "--n-channels", "40")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "padim" / "manifest.json").read_text())["method"] == "padim"
    Image.fromarray(defect_crop[0]).save(tmp_path / "defect.png")
    result = run("predict", tmp_path / "padim", tmp_path / "defect.png", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "out" / "scores.json").read_text())) == 1


def test_an_option_the_method_does_not_use_is_refused(image_folder: Path, tmp_path: Path) -> None:
    result = run("fit", image_folder, "--out", tmp_path / "m", "--method", "spade", "--coreset-ratio", "0.5")
    assert result.exit_code != 0
    assert "--coreset-ratio" in result.output and "spade" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_preset_sets_its_parameters_and_explicit_options_win(image_folder: Path, tmp_path: Path) -> None:
    from patchcore.backbones import get_backbone_spec, resolve_layers

    result = run("fit", image_folder, "--out", tmp_path / "small", "--preset", "small-defects", "--coreset-ratio", "0.2",
                 "--image-size", "128")
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "small" / "manifest.json").read_text())["params"]
    assert params["patch_size"] == 1 and params["coreset_ratio"] == 0.2  # the explicit option beat the preset's 0.01
    assert params["layers"] == list(resolve_layers(get_backbone_spec(params["backbone"]), ["level1", "level2"]))
    result = run("fit", image_folder, "--out", tmp_path / "paper", "--preset", "paper")
    assert result.exit_code == 0, result.output
    preprocessing = json.loads((tmp_path / "paper" / "manifest.json").read_text())["preprocessing"]
    assert preprocessing["image_size"] == [256, 256] and preprocessing["center_crop"] == 224
    result = run("fit", image_folder, "--out", tmp_path / "spade", "--method", "spade", "--preset", "small-defects")
    assert result.exit_code != 0 and "preset 'small-defects' sets" in result.output and "spade" in result.output
    assert not (tmp_path / "spade").exists()


def test_fit_an_ensemble_of_presets_then_predict_with_it(image_folder: Path, defect_crop, tmp_path: Path) -> None:
    result = run("fit", image_folder, "--out", tmp_path / "model", "--ensemble", "small-defects,default",
                 "--image-size", "128", "--coreset-ratio", "0.1")
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 models (small-defects, default)" in result.output
    assert "default: inspects 128 x 128 images at 128 x 128 px (native), 1 tile each" in result.output
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["method"] == "ensemble"
    assert [m["params"]["patch_size"] for m in manifest["members"]] == [1, 3]
    assert [m["params"]["coreset_ratio"] for m in manifest["members"]] == [0.1, 0.1]  # given options reach every member
    Image.fromarray(defect_crop[0]).save(tmp_path / "defect.png")
    good = next(image_folder.glob("*.png"))
    result = run("predict", tmp_path / "model", tmp_path / "defect.png", good, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = {Path(row["image"]).name: row for row in json.loads((tmp_path / "out" / "scores.json").read_text())}
    assert rows["defect.png"]["score"] > rows[good.name]["score"] and rows["defect.png"]["decision"] == "defect"
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) == 2
    for extra in (["--ensemble", "small-defects"], ["--ensemble", "small-defects,nope"],
                  ["--ensemble", "small-defects,default", "--preset", "paper"]):
        result = run("fit", image_folder, "--out", tmp_path / "refused", *extra)
        assert result.exit_code != 0 and "--ensemble" in result.output, result.output
    assert not (tmp_path / "refused").exists()


def test_an_unknown_device_is_one_clear_line(image_folder: Path, tmp_path: Path) -> None:
    result = run("fit", image_folder, "--out", tmp_path / "m", "--device", "tpu")
    assert result.exit_code != 0 and result.output.strip() == "Error: unknown device 'tpu': use cpu, cuda or cuda:N"
    assert not (tmp_path / "m").exists()


def test_predict_never_scores_its_own_output_folder(image_folder: Path, tmp_path: Path) -> None:
    folder = copy_images(image_folder, tmp_path / "images")
    assert run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05", "--image-size", "128").exit_code == 0
    for _ in range(2):  # the second run finds the first run's heatmaps inside the folder it scores
        result = run("predict", tmp_path / "model", folder, "--out", folder / "out")
        assert result.exit_code == 0, result.output
        assert len(json.loads((folder / "out" / "scores.json").read_text())) == 3


def test_outputs_are_checked_before_any_work(image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for command in (["fit", image_folder, "--out", tmp_path / "taken" / "model"],
                    ["predict", tmp_path / "no-model", image_folder, "--out", tmp_path / "taken"]):
        result = run(*command)
        assert result.exit_code != 0 and "is a file, not a folder" in result.output, result.output
    if os.geteuid() != 0:  # root writes anywhere
        result = run("fit", image_folder, "--out", locked / "model")
        assert result.exit_code != 0 and "is not writable" in result.output


def test_predict_streams_scores_and_ends_with_a_summary(image_folder: Path, defect_crop, tmp_path: Path,
                                                        monkeypatch) -> None:
    import patchcore.apps.jobs

    assert run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05").exit_code == 0
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(defect_crop[0]).save(folder / "a_defect.png")
    for i, path in enumerate(sorted(image_folder.glob("*.png"))[:2]):
        (folder / f"b{i}.png").write_bytes(path.read_bytes())
    result = run("predict", tmp_path / "model", folder, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[-2]
    assert re.fullmatch(r"scored 3 images in \d+\.\d s \(\d+\.\d images/s\): 1 defect, 2 good", summary), summary

    # A run that dies part-way keeps the scores it computed (chunks of 2 so that one is done before the failure).
    (folder / "c_cut.png").write_bytes((folder / "b0.png").read_bytes()[:200])
    monkeypatch.setattr(patchcore.apps.jobs, "PREDICT_CHUNK", 2)
    result = run("predict", tmp_path / "model", folder, "--out", tmp_path / "died")
    assert result.exit_code != 0 and "c_cut.png" in result.output
    lines = (tmp_path / "died" / "scores.csv").read_text().splitlines()
    assert lines[0].startswith("image,score") and len(lines) == 3 and "a_defect.png" in lines[1]


def test_serve_on_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", tmp_path / "no-model", "--port", port)
    assert result.exit_code != 0
    assert result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port}: already in use"


def test_the_working_size_description_says_when_images_are_squashed() -> None:
    from patchcore.core.preprocessing import Preprocessor

    paper = Preprocessor((256, 256), (0.0,) * 3, (1.0,) * 3, center_crop=224)
    line = paper.describe((3600, 300))
    assert line.startswith("inspects 3600 x 300 images at 256 x 256 px (squashed: 0.07x across, 0.85x down, "
                           "centre 224 x 224 kept), 1 tile each")


@pytest.mark.slow
def test_regions_reach_scores_heatmaps_and_the_size_rule(tmp_path: Path) -> None:
    """Fit on non-square gravel tiles; predict a pasted 32 px defect and a good tile: the defect's region is in
    scores.json (box, area) and scores.csv (count, largest area), outlined in magenta on its heatmap only, and
    --min-defect-area larger than it turns the decision to good (in mm^2 with --pixel-size)."""
    from patchcore.data.offline import texture_photo
    from tests.helpers import gravel_tiles, paste_defect

    train, goods = gravel_tiles()
    (tmp_path / "good").mkdir()
    for i, tile in enumerate(train):
        Image.fromarray(tile).save(tmp_path / "good" / f"{i:02d}.png")
    fitted = run("fit", tmp_path / "good", "--out", tmp_path / "model", "--coreset-ratio", "0.1")
    assert fitted.exit_code == 0, fitted.output
    assert re.search(r"threshold [\d.]+ at a 1.0% false-alarm rate \(.*; on new good images [\d.]+% to [\d.]+%, "
                     r"95 % interval\)", fitted.output), fitted.output
    (tmp_path / "query").mkdir()
    defect = paste_defect(goods[1], 30, 40, 32, texture_photo("brick")[100:, 100:])
    Image.fromarray(defect).save(tmp_path / "query" / "defect.png")
    Image.fromarray(goods[0]).save(tmp_path / "query" / "good.png")

    result = run("predict", tmp_path / "model", tmp_path / "query", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = {Path(row["image"]).name: row for row in json.loads((tmp_path / "out" / "scores.json").read_text())}
    assert rows["defect.png"]["decision"] == "defect" and rows["good.png"]["n_regions"] == 0
    (region,) = rows["defect.png"]["regions"]
    x0, y0, x1, y1 = region["bbox"]
    assert x0 <= 56 < x1 and y0 <= 46 < y1 and 0.5 * 32**2 < region["area"] < 1.5 * 32**2
    assert rows["defect.png"]["largest_region_area"] == region["area"]
    csv_text = (tmp_path / "out" / "scores.csv").read_text()
    assert csv_text.splitlines()[0].endswith("decision,n_regions,largest_region_area")
    magenta = [(np.asarray(Image.open(tmp_path / "out" / "heatmaps" / name)) == (255, 0, 255)).all(axis=-1).sum()
               for name in ("defect.png", "good.png")]
    assert magenta[0] > 50 and magenta[1] == 0

    larger = run("predict", tmp_path / "model", tmp_path / "query" / "defect.png", "--out", tmp_path / "out2",
                 "--min-defect-area", str(4 * 32**2))
    assert larger.exit_code == 0, larger.output
    assert json.loads((tmp_path / "out2" / "scores.json").read_text())[0]["decision"] == "good"
    in_mm = run("predict", tmp_path / "model", tmp_path / "query" / "defect.png", "--out", tmp_path / "out3",
                "--min-defect-area", "1", "--pixel-size", "0.05")  # 1 mm^2 = 400 px: smaller than the defect
    assert in_mm.exit_code == 0, in_mm.output
    row = json.loads((tmp_path / "out3" / "scores.json").read_text())[0]
    assert row["decision"] == "defect"
    assert row["regions"][0]["area_mm2"] == pytest.approx(row["regions"][0]["area"] * 0.0025)


def test_fit_warns_in_one_line_when_training_sizes_spread_widely(train_crops, tmp_path: Path) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for i, crop in enumerate(train_crops[:4]):
        Image.fromarray(crop).save(folder / f"large_{i}.png")
        Image.fromarray(crop[:40, :40]).save(folder / f"small_{i}.png")
    result = run("fit", folder, "--out", tmp_path / "model", "--coreset-ratio", "0.1", "--threshold-folds", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "apart" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the training images range from 40 x 40")


def test_decide_stores_a_new_rate_as_a_version_that_rollback_undoes(image_folder: Path, tmp_path: Path) -> None:
    assert run("fit", image_folder, "--out", tmp_path / "model", "--coreset-ratio", "0.05").exit_code == 0
    result = run("decide", tmp_path / "model", "--false-alarm-rate", "0.2", "--min-defect-area", "50")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("version 2 of ") and "false_alarm_rate 0.2, min_defect_area 50.0" in result.output
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["params"]["false_alarm_rate"] == 0.2 and manifest["params"]["min_defect_area"] == 50.0
    assert manifest["change"]["action"] == "decide"
    assert run("rollback", tmp_path / "model", "1").exit_code == 0
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["params"]["false_alarm_rate"] == 0.01
    refused = run("decide", tmp_path / "model", "--false-alarm-rate", "1.5")
    assert refused.exit_code == 2 and "false_alarm_rate must be in (0, 1)" in refused.output


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_commands_let_idle_openmp_threads_sleep_unless_told_otherwise(given, expected) -> None:
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    script = ("import os, sys; from patchcore.apps.cli import main; main(['backbones'], standalone_mode=False); "
              "print('policy', os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert f"policy {expected}" in out


@pytest.mark.slow
def test_fit_suggests_the_small_defects_preset_only_for_large_images(train_crops, fitted_model) -> None:
    from patchcore import PatchCore
    from patchcore.apps.cli.fit import preset_hint

    assert preset_hint(fitted_model) is None  # 128 px working images
    large = PatchCore(image_size=1024, coreset_ratio=0.01, threshold_folds=2).fit(train_crops[:2])
    assert "--preset small-defects" in preset_hint(large) and "--ensemble small-defects,default" in preset_hint(large)
    assert preset_hint(large.set_params(patch_size=1)) is None  # a neighbourhood chosen already
