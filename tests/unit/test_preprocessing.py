"""The whole image at its own resolution: borders inspected, maps aligned, tiles, region of interest, bounded memory."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore import PatchCore
from patchcore.core.preprocessing import Preprocessor, choose_working_side
from patchcore.data.offline import texture_photo

WIDTH, HEIGHT, DEFECT = 320, 192, 16


@pytest.fixture(scope="module")
def gravel() -> np.ndarray:
    return texture_photo("gravel")


@pytest.fixture(scope="module")
def wide_train(brick: np.ndarray) -> list[np.ndarray]:
    """Non-square good images from the brick photo's upper part."""
    return [brick[y : y + HEIGHT, x : x + WIDTH] for y in (0, 60, 120) for x in (0, 64, 128, 192)]


@pytest.fixture(scope="module")
def wide_test(brick: np.ndarray) -> np.ndarray:
    return brick[320 : 320 + HEIGHT, 96 : 96 + WIDTH]


def defect_positions() -> dict[str, tuple[int, int]]:
    """Top-left corners of a DEFECT-pixel square in each corner and at the middle of each edge."""
    right, bottom = WIDTH - DEFECT, HEIGHT - DEFECT
    return {"top left": (0, 0), "top right": (0, right), "bottom left": (bottom, 0), "bottom right": (bottom, right),
            "top": (0, WIDTH // 2), "bottom": (bottom, WIDTH // 2), "left": (HEIGHT // 2, 0), "right": (HEIGHT // 2, right)}


def with_defect(image: np.ndarray, donor: np.ndarray, top: int, left: int) -> np.ndarray:
    out = image.copy()
    out[top : top + DEFECT, left : left + DEFECT] = donor[200 : 200 + DEFECT, 200 : 200 + DEFECT]
    return out


def peak(amap: np.ndarray) -> tuple[int, int]:
    return np.unravel_index(np.nanargmax(amap), amap.shape)


@pytest.fixture(scope="module")
def whole_model(wide_train) -> PatchCore:
    return PatchCore(coreset_ratio=0.25, holdout_fraction=0.0).fit(wide_train)


@pytest.mark.slow
def test_defects_in_every_corner_and_edge_are_found_and_located(whole_model, wide_test, gravel) -> None:
    assert whole_model.preprocessor_.image_size == WIDTH  # native resolution, aspect kept
    good = whole_model.predict([wide_test])[0]
    assert good.anomaly_map.shape == (HEIGHT, WIDTH) and not np.isnan(good.anomaly_map).any()
    for name, (top, left) in defect_positions().items():
        prediction = whole_model.predict([with_defect(wide_test, gravel, top, left)])[0]
        assert prediction.score > 1.2 * good.score, name
        y, x = peak(prediction.anomaly_map)
        margin = 6  # pixels around the square
        assert top - margin <= y < top + DEFECT + margin and left - margin <= x < left + DEFECT + margin, (name, y, x)


@pytest.mark.slow
def test_the_paper_crop_misses_corner_defects_and_does_not_invent_a_border(wide_train, wide_test, gravel) -> None:
    paper = PatchCore(image_size=(256, 256), center_crop=224, coreset_ratio=0.25, holdout_fraction=0.0).fit(wide_train)
    good = paper.predict([wide_test])[0]
    # The squashed 256 x 256 image loses 16 of 256 on every side: 20 px of 320, 12 px of 192, never inspected.
    assert np.isnan(good.anomaly_map[:, :20]).all() and np.isnan(good.anomaly_map[:12]).all()
    assert not np.isnan(good.anomaly_map[12:-12, 20:-20]).any()
    for name in ("top left", "top right", "bottom left", "bottom right"):
        top, left = defect_positions()[name]
        prediction = paper.predict([with_defect(wide_test, gravel, top, left)])[0]
        y, x = peak(prediction.anomaly_map)
        assert not (top <= y < top + DEFECT and left <= x < left + DEFECT), name  # its maximum lies elsewhere


@pytest.mark.slow
def test_tiled_and_whole_scoring_agree(wide_train, whole_model, wide_test, gravel) -> None:
    tiled = PatchCore(coreset_ratio=0.25, holdout_fraction=0.0, tile_size=192).fit(wide_train)
    assert len(tiled.preprocessor_.tiles((WIDTH, HEIGHT))) > 1
    images = [wide_test, with_defect(wide_test, gravel, 80, 150)]
    for whole, piecewise in zip(whole_model.predict(images), tiled.predict(images)):
        # Tiles see 64 px of context beyond their core, not the whole image: close, not equal (5.3 % apart
        # measured on an H200, where the banks are searched exactly; under 5 % on CPU with ivf).
        assert piecewise.score == pytest.approx(whole.score, rel=0.08)
        assert np.abs(peak(piecewise.anomaly_map)[1] - peak(whole.anomaly_map)[1]) <= 8
    y, x = peak(tiled.predict([images[1]])[0].anomaly_map)
    assert 80 - 6 <= y < 80 + DEFECT + 6 and 150 - 6 <= x < 150 + DEFECT + 6  # no seam takes the maximum


def test_tile_cores_partition_the_patch_grid() -> None:
    preprocessor = Preprocessor(4000, (0.0,) * 3, (1.0,) * 3, tile_size=1024)
    network = preprocessor.network_size((5000, 3000))
    rows, columns = preprocessor.grid_size(network)
    covered = np.zeros((rows, columns), dtype=int)
    for tile in preprocessor.tiles(network):
        top, bottom, left, right = tile.core
        covered[tile.place[0] : tile.place[0] + bottom - top, tile.place[1] : tile.place[1] + right - left] += 1
        assert tile.width <= 1024 and tile.height <= 1024 and tile.x % 16 == 0 and tile.y % 16 == 0
    assert (covered == 1).all()


@pytest.mark.slow
def test_a_region_of_interest_removes_a_defect_outside_it(wide_train, whole_model, wide_test, gravel) -> None:
    mask = np.ones((HEIGHT, WIDTH), dtype=bool)
    mask[:, 2 * WIDTH // 3 :] = False  # a fixture on the right: not to be inspected
    masked = PatchCore(coreset_ratio=0.25, holdout_fraction=0.0, roi_mask=mask).fit(wide_train)
    assert masked.n_patches_seen_ < whole_model.n_patches_seen_  # the fixture's patches stay out of the bank
    outside = with_defect(wide_test, gravel, 80, WIDTH - 40)
    plain, with_roi = whole_model.predict([outside])[0], masked.predict([outside])[0]
    good = masked.predict([wide_test])[0]
    assert plain.score > 1.2 * whole_model.predict([wide_test])[0].score  # seen without the mask
    assert with_roi.score == pytest.approx(good.score, rel=0.02)  # gone from the score with it
    assert np.isnan(with_roi.anomaly_map[:, 2 * WIDTH // 3 + 1 :]).all()  # and from the map
    inside = masked.predict([with_defect(wide_test, gravel, 80, 60)])[0]
    assert inside.score > 1.2 * good.score  # a defect inside is still found


def test_working_side_rule() -> None:
    assert choose_working_side([(300, 300)] * 3) == 300  # native
    assert choose_working_side([(128, 128)] * 3) == 256  # small images enlarged
    assert choose_working_side([(1200, 900), (1200, 900), (640, 480)]) == 1200  # the median longer side
    assert choose_working_side([(6000, 4000)]) == 2508  # capped at 2048 x 2048 pixels: tiles then cover it
    assert choose_working_side([(4096, 4096)]) == 2048
    assert choose_working_side([(3600, 300)] * 3) == 3600  # a line-scan strip keeps its 300 px across
    assert choose_working_side([(16000, 1000)]) == 8192  # ... up to the same number of pixels


# The peak is read from /proc (VmHWM, this process's own): Linux's ru_maxrss carries the parent's resident size
# over fork and exec, so beside a test session holding gigabytes it reported theirs (3.1 GB in a full suite run).
PREDICT_20MP = """
import json, re, sys
from pathlib import Path
from patchcore import load_model
prediction = load_model(sys.argv[1], device="cpu").predict([sys.argv[2]])[0]
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"shape": list(prediction.anomaly_map.shape), "score": prediction.score, "peak_mb": peak_kb / 1024}))
"""


@pytest.mark.slow
def test_a_20_megapixel_prediction_stays_within_a_memory_bound(brick: np.ndarray, tmp_path: Path) -> None:
    frame = np.tile(brick, (8, 10))[:4000, :5000]  # 5000 x 4000 px
    small = Image.fromarray(frame[:1000, :1250])
    model = PatchCore(image_size=5000, tile_size=1024, sampler="random", coreset_ratio=0.01, holdout_fraction=0.0)
    model.fit([small]).save(tmp_path / "model")  # the 1250 px image upscaled 4x: a bank at the frame's scale
    Image.fromarray(frame).convert("RGB").save(tmp_path / "frame.bmp")
    run = subprocess.run([sys.executable, "-c", PREDICT_20MP, str(tmp_path / "model"), str(tmp_path / "frame.bmp")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["shape"] == [4000, 5000]
    # Tile by tile it measured 0.94-1.1 GB; the same prediction
    # without tiles measured 5.4 GB (its first convolutions alone hold GBs). The process includes torch, on
    # the CPU on every machine: on a GPU machine CUDA's libraries alone took the process to 3.7 GB.
    assert result["peak_mb"] < 3000, result


def test_overlays_are_bounded_and_leave_uninspected_pixels_uncoloured() -> None:
    import io

    from patchcore.io.visualize import overlay_png

    picture = Image.fromarray(np.full((2000, 3000, 3), 128, dtype=np.uint8))
    amap = np.linspace(0, 1, 3000, dtype=np.float32)[None].repeat(2000, axis=0)
    amap[:, :300] = np.nan  # the left tenth was not inspected
    small = Image.open(io.BytesIO(overlay_png(picture, amap, None)))
    assert small.size == (1254, 836)  # a megapixel, aspect kept
    pixels = np.asarray(small)
    assert (pixels[:, :110] == 128).all() and not (pixels[:, 200:] == 128).all(axis=-1).any()
    strip = Image.fromarray(np.full((300, 3600, 3), 128, dtype=np.uint8))
    assert Image.open(io.BytesIO(overlay_png(strip, np.zeros((300, 3600), np.float32), None))).size == (3547, 296)
    full = Image.open(io.BytesIO(overlay_png(picture, amap, None, max_side=None)))
    assert full.size == (3000, 2000)


@pytest.mark.slow
def test_the_cli_and_service_read_16_bit_images_with_the_models_bit_depth(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from patchcore.apps.cli import main

    rng = np.random.default_rng(0)
    for i in range(4):  # 12-bit data in 16-bit files: values up to 4095
        Image.fromarray(rng.integers(1500, 2500, (64, 96)).astype(np.uint16)).save(tmp_path / f"{i}.png")
    model_dir = tmp_path / "model"
    run = CliRunner().invoke(main, ["fit", str(tmp_path), "--out", str(model_dir), "--bit-depth", "12",
                                    "--holdout-fraction", "0", "--sampler", "none"])
    assert run.exit_code == 0, run.output
    bright = np.full((64, 96), 4095, dtype=np.uint16)  # saturated at 12 bits: white to the model
    Image.fromarray(bright).save(tmp_path / "query.tif")
    model = PatchCore.load(model_dir)
    assert model.bit_depth == 12
    run = CliRunner().invoke(main, ["predict", str(model_dir), str(tmp_path / "query.tif"), "--out", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output
    scores = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert scores[0]["score"] == pytest.approx(model.predict([np.full((64, 96, 3), 255, dtype=np.uint8)])[0].score, rel=1e-5)


def test_training_images_of_very_different_sizes_are_warned_about(train_crops) -> None:
    import warnings

    from patchcore import PatchCore, PatchCoreWarning

    small = [crop[:64, :64] for crop in train_crops[:4]]  # 64 px beside 128 px: 2x apart is still quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatchCoreWarning)
        PatchCore(coreset_ratio=0.1, threshold_folds=2).fit(small + list(train_crops[:4]))
    tiny = [crop[:40, :40] for crop in train_crops[:4]]
    with pytest.warns(PatchCoreWarning, match=r"from 40 x 40 \(enlarged 6\.4x\) to 128 x 128 px \(enlarged 2\.0x\), "
                                              r"3x apart.*--image-size"):
        PatchCore(coreset_ratio=0.1, threshold_folds=2).fit(tiny + list(train_crops[:4]))
