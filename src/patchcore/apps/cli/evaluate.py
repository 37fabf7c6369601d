"""Commands that measure: `evaluate` (fit and test categories), `experiment` (the paper's), `datasets` (the offline
benchmarks) and `demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patchcore.apps.cli.common import (declared_command, echo_metrics, echo_threshold, ensemble_option, factory,
                                       load_categories, main, ray_options, ray_settings)


@declared_command(main)
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("evaluation"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for results.json and results.md.")
@click.option("--save-maps", is_flag=True, help="Also write heatmap overlays of every test image.")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path),
              help="Also write report.html here: metrics, ROC, PRO, score histograms and hardest images.")
@ensemble_option
@ray_options
def evaluate(root: Path, categories: str | None, out_dir: Path, save_maps: bool, report_dir: Path | None,
             ensemble_presets: list[str] | None, use_ray: bool, ray_address: str | None, ray_threads: int | None,
             **options) -> None:
    """Fit and evaluate each category under ROOT (MVTec AD layout): AUROCs, PRO, time, memory."""
    import torch

    from patchcore.evaluation.evaluate import evaluate_category, write_results
    from patchcore.apps.outputs import check_writable_folder

    check_writable_folder(out_dir)
    if report_dir is not None:
        check_writable_folder(report_dir, "--report")
    loaded = load_categories(root, categories)
    # A bad option fails before the first category.
    make_model = factory(options, ensemble_presets)
    maps_dir = out_dir / "maps" if save_maps else None
    threads = ray_settings(use_ray, ray_address, ray_threads, torch.get_num_threads())
    if threads is None:
        results = []
        for category in loaded:
            click.echo(f"{category.name}: {len(category.train_images)} train, {len(category.test_samples)} test images")
            results.append(evaluate_category(category, make_model, maps_dir, details=report_dir is not None))
            echo_metrics(results[-1])
    else:
        from patchcore.apps.distributed import evaluate_categories

        click.echo(f"evaluating {len(loaded)} categories as Ray tasks, {threads} thread(s) each")
        results = evaluate_categories(loaded, make_model, maps_dir, report_dir is not None, threads)
        for result in results:
            click.echo(f"{result.category}:")
            echo_metrics(result)
    command = "patchcore " + " ".join(sys.argv[1:])
    params = make_model().get_params()
    click.echo(write_results(results, params, out_dir, command))
    click.echo(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    if report_dir is not None:
        from patchcore.evaluation.report import write_report

        click.echo(f"wrote {write_report(results, params, report_dir, command)}")


@declared_command(main, declared_names=("backbone", "weights", "seed"))
@click.argument("name")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("experiments"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for NAME.md and NAME.json.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Low-shot: random draws of training images.")
def experiment(name: str, root: Path, categories: str | None, out_dir: Path, backbone: str | None,
               weights: str | None, seed: int | None, seeds: int) -> None:
    """Run one of the paper's experiments (NAME, or 'all') on the categories under ROOT; write its table.

    NAME: subsamplers, bank-usage, patch-size-levels, stride, reweighting, search-index, baselines,
    low-shot, ensembles, timing, all.
    """
    from patchcore.core.patchcore import PatchCore
    from patchcore.evaluation.experiments import EXPERIMENTS, run_experiment

    if name not in (*EXPERIMENTS, "all"):
        raise click.UsageError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}, all")
    from patchcore.apps.outputs import check_writable_folder

    check_writable_folder(out_dir)
    defaults = PatchCore()
    loaded = load_categories(root, categories)
    command = "patchcore " + " ".join(sys.argv[1:])
    for chosen in EXPERIMENTS if name == "all" else [name]:
        table = run_experiment(chosen, loaded, out_dir, command, seed=defaults.seed if seed is None else seed,
                               backbone=backbone or defaults.backbone, weights=weights, seeds=seeds,
                               log=lambda line: click.echo(line, err=True))
        click.echo(f"{table.title}\n{table.markdown()}\nwrote {out_dir / (chosen + '.md')}")


@main.group()
def datasets() -> None:
    """Build benchmark datasets in MVTec AD layout."""


@datasets.command("build-offline")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None, help="Comma-separated subset (default: all that can be built).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--install", is_flag=True, help="pip-install missing source packages (scikit-image, elpv-dataset).")
def build_offline(root: Path, categories: str | None, seed: int, install: bool) -> None:
    """Write the real-data offline benchmarks under ROOT: texture crops and 2000 x 720 panels with synthetic
    defects, ELPV cells and 1200 x 900 modules with real (and small synthetic) defects."""
    from patchcore.data.offline import OFFLINE_CATEGORIES, build_offline_benchmarks, install_packages, missing_packages

    chosen = tuple(categories.split(",")) if categories else OFFLINE_CATEGORIES
    if install:
        install_packages(missing_packages(chosen))
    build_offline_benchmarks(root, chosen, seed=seed, progress=True)
    click.echo(f"wrote {', '.join(chosen)} under {root} (details in {root / 'benchmark.json'})")


@declared_command(main, declared_names=("device",))
@click.option("--out", "out_dir", default=Path("demo_output"), show_default=True, type=click.Path(path_type=Path))
@click.option("--category", default="gravel", show_default=True, type=click.Choice(["brick", "grass", "gravel"]))
def demo(out_dir: Path, category: str, device: str | None) -> None:
    """Fit on real texture photos shipped with scikit-image and find synthetic defects on held-out crops."""
    from sklearn.metrics import roc_auc_score

    from patchcore.apps.jobs import predict_files
    from patchcore.core.patchcore import PatchCore
    from patchcore.data.offline import build_offline_benchmarks
    from patchcore.io.images import collect_images
    from patchcore.apps.outputs import check_writable_folder, write_scores
    from patchcore.io.files import output_names

    check_writable_folder(out_dir)
    data_root = build_offline_benchmarks(out_dir / "data", (category,))
    model = PatchCore(device=device, progress=True).fit(data_root / category)
    model.save(out_dir / "model")
    files = collect_images(data_root / category)  # an MVTec category: its test images
    rows, _ = predict_files(model, files, output_names(files), out_dir / "predictions", progress=True)
    write_scores(rows, out_dir / "predictions")
    good = [row for row, f in zip(rows, files) if f.parent.name == "good"]
    bad = [row for row, f in zip(rows, files) if f.parent.name != "good"]
    auroc = roc_auc_score([0] * len(good) + [1] * len(bad), [r["score"] for r in good + bad])
    echo_threshold(model)
    false_alarms = sum(r["decision"] == "defect" for r in good) / len(good)
    recall = sum(r["decision"] == "defect" for r in bad) / len(bad)
    click.echo(
        f"{category}: {len(good)} good test crops, {len(bad)} with synthetic defects; image AUROC {100 * auroc:.1f}; "
        f"at the threshold: {100 * false_alarms:.0f} % of good crops flagged (nominal "
        f"{100 * model.false_alarm_rate:.0f} %), {100 * recall:.0f} % of defects found\n"
        f"model: {out_dir / 'model'}  heatmaps: {out_dir / 'predictions' / 'heatmaps'}"
    )

