"""Ray: fit and evaluate per category as tasks, predict in actors; the same results as the serial runs."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from patchcore.apps.cli import main  # noqa: E402
from tests.helpers import run_cli, small_texture_category  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    small_texture_category(root)
    (root / "brick").rename(root / "first")
    small_texture_category(root)
    return root


def run(*args) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_evaluate_on_ray_equals_the_serial_run(local_ray, two_categories: Path, tmp_path: Path) -> None:
    options = ["--coreset-ratio", "0.1", "--holdout-fraction", "0.2"]
    run("evaluate", two_categories, "--out", tmp_path / "serial", *options)
    output = run("evaluate", two_categories, "--out", tmp_path / "ray", "--ray", *options)
    assert "as Ray tasks" in output
    serial = json.loads((tmp_path / "serial" / "results.json").read_text())["results"][:2]  # not the mean row
    parallel = json.loads((tmp_path / "ray" / "results.json").read_text())["results"][:2]
    keys = ("category", "image_auroc", "pixel_auroc", "pro", "threshold", "f1_optimal_threshold", "memory_bank_size")
    assert [[row[k] for k in keys] for row in parallel] == [[row[k] for k in keys] for row in serial]
    assert [row["category"] for row in parallel] == ["brick", "first"]


@pytest.mark.slow
def test_fit_many_categories_on_ray_gives_the_serial_models(local_ray, two_categories: Path, tmp_path: Path) -> None:
    run("fit", two_categories, "--categories", "all", "--out", tmp_path / "serial", "--coreset-ratio", "0.1")
    run("fit", two_categories, "--categories", "all", "--out", tmp_path / "ray", "--coreset-ratio", "0.1", "--ray")
    for name in ("brick", "first"):
        for array in ("memory_bank.npy", "nominal_scores.npy"):
            assert (tmp_path / "ray" / name / array).read_bytes() == (tmp_path / "serial" / name / array).read_bytes()


@pytest.mark.slow
def test_predict_in_ray_actors_writes_the_serial_scores_and_heatmaps(local_ray, two_categories: Path,
                                                                      tmp_path: Path) -> None:
    run("fit", two_categories / "brick", "--out", tmp_path / "model", "--coreset-ratio", "0.1")
    test_images = two_categories / "brick" / "test"
    run("predict", tmp_path / "model", test_images, "--out", tmp_path / "serial")
    run("predict", tmp_path / "model", test_images, "--out", tmp_path / "ray", "--ray", "--workers", "2",
        "--ray-threads", str(__import__("torch").get_num_threads()))
    serial = json.loads((tmp_path / "serial" / "scores.json").read_text())
    parallel = json.loads((tmp_path / "ray" / "scores.json").read_text())
    assert len(parallel) == 5 and parallel == serial
    assert sorted(p.name for p in (tmp_path / "ray" / "heatmaps").iterdir()) == sorted(
        p.name for p in (tmp_path / "serial" / "heatmaps").iterdir())


def test_ray_options_need_ray_mode(two_categories: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["fit", str(two_categories / "brick"), "--out", str(tmp_path / "m"), "--ray"])
    assert result.exit_code != 0 and "add --categories" in result.output


@pytest.mark.slow
def test_the_core_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, patchcore.apps.cli, patchcore.core.patchcore, patchcore.apps.service; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
