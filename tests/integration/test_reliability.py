"""Nothing lost, nothing half-written, same answers twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from patchcore.apps.cli import main
from patchcore.errors import ModelFileError
from patchcore.core.patchcore import PatchCore


@pytest.mark.slow
def test_same_data_config_and_seed_give_bit_identical_banks_and_scores(train_crops, good_test_crops,
                                                                       defect_crop) -> None:
    images = [*good_test_crops[:2], defect_crop[0]]
    first = PatchCore(coreset_ratio=0.05, holdout_fraction=0.2, seed=3).fit(train_crops[:12])
    second = PatchCore(coreset_ratio=0.05, holdout_fraction=0.2, seed=3).fit(train_crops[:12])
    assert first.memory_bank_.tobytes() == second.memory_bank_.tobytes()
    assert first.nominal_scores_.tobytes() == second.nominal_scores_.tobytes()
    a, b = first.predict(images), second.predict(images)
    assert [p.score for p in a] == [p.score for p in b]
    assert all(x.anomaly_map.tobytes() == y.anomaly_map.tobytes() for x, y in zip(a, b))
    other_seed = PatchCore(coreset_ratio=0.05, holdout_fraction=0.2, seed=4).fit(train_crops[:12])
    assert other_seed.memory_bank_.tobytes() != first.memory_bank_.tobytes()  # the seed matters


@pytest.mark.slow
def test_a_fit_killed_at_any_moment_leaves_the_previous_model_or_the_new_one(image_folder: Path,
                                                                           tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    fit = [sys.executable, "-m", "patchcore", "fit", str(image_folder), "--out", str(model_dir),
           "--coreset-ratio", "0.05", "--image-size", "128"]  # the crops' native size: a shorter run, same saves
    subprocess.run([*fit, "--seed", "1"], check=True, capture_output=True)
    previous = PatchCore.load(model_dir).memory_bank_
    # Kill the second fit (another seed: another bank) at moments spread over its run, saving included.
    started = time.monotonic()
    subprocess.run([*fit, "--seed", "2"], check=True, capture_output=True)
    full_run = time.monotonic() - started
    replacement = PatchCore.load(model_dir).memory_bank_
    subprocess.run([*fit, "--seed", "1"], check=True, capture_output=True)
    for fraction in (0.5, 0.85, 0.95, 1.0):  # most moments near the end, where the save (and versioning) runs
        process = subprocess.Popen([*fit, "--seed", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full_run * fraction)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        bank = PatchCore.load(model_dir).memory_bank_  # loads: checksums and manifest verified
        assert np.array_equal(bank, previous) or np.array_equal(bank, replacement)
    # A clean re-run replaces whatever is there and leaves no staging or retired copies behind.
    subprocess.run([*fit, "--seed", "2"], check=True, capture_output=True)
    assert np.array_equal(PatchCore.load(model_dir).memory_bank_, replacement)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_edited_manifest_is_refused(fitted_model, tmp_path: Path) -> None:
    model_dir = fitted_model.save(tmp_path / "model")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["params"]["coreset_ratio"] = 0.5
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="manifest.json: checksum mismatch"):
        PatchCore.load(model_dir)


def test_a_truncated_bank_is_refused(fitted_model, tmp_path: Path) -> None:
    model_dir = fitted_model.save(tmp_path / "model")
    bank = model_dir / "memory_bank.npy"
    bank.write_bytes(bank.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="memory_bank.npy: checksum mismatch"):
        PatchCore.load(model_dir)


def test_skip_bad_fits_and_predicts_around_unreadable_files(image_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, file in enumerate(sorted(image_folder.glob("*.png"))):
        size = (128, 128) if i % 2 else (150, 110)  # mixed sizes in one folder are fine
        Image.open(file).resize(size).save(folder / f"{i:02d}.png")
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    runner = CliRunner()
    aborted = runner.invoke(main, ["fit", str(folder), "--out", str(tmp_path / "m"), "--coreset-ratio", "0.05"])
    assert aborted.exit_code != 0 and "notes.jpg: not a readable image" in aborted.output
    assert not (tmp_path / "m").exists()
    fitted = runner.invoke(main, ["fit", str(folder), "--out", str(tmp_path / "m"), "--coreset-ratio", "0.05",
                                  "--skip-bad"])
    assert fitted.exit_code == 0, fitted.output
    assert "skipped 2 unreadable file(s)" in fitted.output and "fitted on 12 images" in fitted.output
    predicted = runner.invoke(main, ["predict", str(tmp_path / "m"), str(folder), "--out", str(tmp_path / "p"),
                                     "--skip-bad"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert len(rows) == 12 and all(row["decision"] in ("good", "defect") for row in rows)


def test_written_files_get_the_usual_permissions(fitted_model, tmp_path: Path) -> None:
    from patchcore.io.files import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "a.txt", b"x")
    model_dir = fitted_model.save(tmp_path / "model")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert model_dir.stat().st_mode & 0o777 == 0o777 & ~umask
