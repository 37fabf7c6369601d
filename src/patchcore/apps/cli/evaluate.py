"""Commands that measure: `evaluate` (fit and test categories), `experiment` (the paper's), `datasets` (the offline
benchmarks) and `demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patchcore.apps.cli.common import (LAYOUT_OPTION_NAMES, declared_command, echo_metrics, echo_threshold,
                                       ensemble_option, factory, layout_options, load_categories, main, ray_options,
                                       ray_settings)


@declared_command(main)
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("evaluation"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for results.json and results.md.")
@click.option("--save-maps", is_flag=True, help="Also write heatmap overlays of every test image.")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path),
              help="Also write report.html here: metrics, ROC, PRO, score histograms and hardest images.")
@click.option("--submission", "submission_dir", default=None, type=click.Path(path_type=Path),
              help="MVTec AD 2: also write the maps of test_private and test_private_mixed here, as its "
                   "evaluation server reads them (check with `patchcore datasets check-submission`).")
@layout_options
@ensemble_option
@ray_options
def evaluate(root: Path, categories: str | None, out_dir: Path, save_maps: bool, report_dir: Path | None,
             submission_dir: Path | None, ensemble_presets: list[str] | None, use_ray: bool,
             ray_address: str | None, ray_threads: int | None, **options) -> None:
    """Fit and evaluate each category of the dataset at ROOT: AUROCs, AU-PRO, decisions, time, memory.

    ROOT is a dataset in a published layout (MVTec AD, MVTec AD 2, VisA, MVTec LOCO, BTAD, MPDD,
    KolektorSDD2: recognised, or named with --layout), one category's folder, a labelled folder of your own
    (good/, bad/, masks/) or a CSV manifest. `patchcore datasets info ROOT` shows what is found.
    """
    import torch

    from patchcore.evaluation.evaluate import evaluate_category, write_results
    from patchcore.apps.outputs import check_writable_folder

    check_writable_folder(out_dir)
    if report_dir is not None:
        check_writable_folder(report_dir, "--report")
    layout = {name: options.pop(name) for name in LAYOUT_OPTION_NAMES}
    loaded = load_categories(root, categories, **layout)
    if submission_dir is not None:
        check_writable_folder(submission_dir, "--submission")
        if use_ray or ray_address:
            raise click.UsageError("--submission writes maps from this process: leave out --ray")
        if not any(category.unlabelled for category in loaded):
            raise click.UsageError(f"{root}: no test_private or test_private_mixed images to submit (MVTec AD 2)")
    # A bad option fails before the first category.
    make_model = factory(options, ensemble_presets)
    maps_dir = out_dir / "maps" if save_maps else None
    threads = ray_settings(use_ray, ray_address, ray_threads, torch.get_num_threads())
    if threads is None:
        results = []
        for category in loaded:
            validation = f", {len(category.validation_images)} validation" if category.validation_images else ""
            click.echo(f"{category.name}: {len(category.train_images)} train{validation}, "
                       f"{len(category.test_samples)} test images")
            result, model = evaluate_category(category, make_model, maps_dir, details=report_dir is not None,
                                              keep_model=True)
            results.append(result)
            echo_metrics(results[-1])
            if submission_dir is not None and category.unlabelled:
                from patchcore.data.submission import write_submission_maps

                written = write_submission_maps(model, category, submission_dir)
                click.echo(f"  wrote {written} submission maps under {submission_dir}")
    else:
        from patchcore.apps.distributed import evaluate_categories

        click.echo(f"evaluating {len(loaded)} categories as Ray tasks, {threads} thread(s) each")
        results = evaluate_categories(loaded, make_model, maps_dir, report_dir is not None, threads)
        for result in results:
            click.echo(f"{result.category}:")
            echo_metrics(result)
    command = "patchcore " + " ".join(sys.argv[1:])
    params = make_model().get_params()
    layouts = {category.layout for category in loaded}
    click.echo(write_results(results, params, out_dir, command, layouts.pop() if len(layouts) == 1 else None))
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
@layout_options
def experiment(name: str, root: Path, categories: str | None, out_dir: Path, backbone: str | None,
               weights: str | None, seed: int | None, seeds: int, **options) -> None:
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
    loaded = load_categories(root, categories, **{name: options.pop(name) for name in LAYOUT_OPTION_NAMES})
    command = "patchcore " + " ".join(sys.argv[1:])
    for chosen in EXPERIMENTS if name == "all" else [name]:
        table = run_experiment(chosen, loaded, out_dir, command, seed=defaults.seed if seed is None else seed,
                               backbone=backbone or defaults.backbone, weights=weights, seeds=seeds,
                               log=lambda line: click.echo(line, err=True))
        click.echo(f"{table.title}\n{table.markdown()}\nwrote {out_dir / (chosen + '.md')}")


@main.group()
def datasets() -> None:
    """See what a dataset folder holds, build the offline benchmarks, check an MVTec AD 2 submission."""


@datasets.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None, help="Comma-separated subset (default: all under ROOT).")
@layout_options
def info(root: Path, categories: str | None, **layout) -> None:
    """Print the layout found at ROOT, its categories and their images per split and label, before any fit."""
    from patchcore.data.layouts import describe_dataset

    click.echo(describe_dataset(root, load_categories(root, categories, **layout)))


@datasets.command("check-submission")
@click.argument("submission", type=click.Path(path_type=Path))
@click.option("--dataset", "dataset_root", default=None, type=click.Path(path_type=Path),
              help="The MVTec AD 2 root the maps were made from: its images give the expected names and sizes "
                   "(default: the official test sets' file counts).")
def check_submission_command(submission: Path, dataset_root: Path | None) -> None:
    """Check an MVTec AD 2 submission folder as its evaluation server's checker does: the folders, one float16
    TIFF map and one 0/255 PNG per test image, nothing else."""
    from patchcore.data.submission import check_submission

    click.echo(check_submission(submission, dataset_root))


@datasets.command("build-offline")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None, help="Comma-separated subset (default: all that can be built).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--install", is_flag=True, help="pip-install missing source packages (scikit-image, elpv-dataset).")
@click.option("--layout", type=click.Choice(["mvtec", "visa", "mvtec_ad2"]), default="mvtec", show_default=True,
              help="Write the categories in this dataset's layout (the same images in each).")
def build_offline(root: Path, categories: str | None, seed: int, install: bool, layout: str) -> None:
    """Write the real-data offline benchmarks under ROOT: texture crops and 2000 x 720 panels with synthetic
    defects, ELPV cells and 1200 x 900 modules with real (and small synthetic) defects."""
    from patchcore.data.offline import OFFLINE_CATEGORIES, build_offline_benchmarks, install_packages, missing_packages

    chosen = tuple(categories.split(",")) if categories else OFFLINE_CATEGORIES
    if install:
        install_packages(missing_packages(chosen))
    build_offline_benchmarks(root, chosen, seed=seed, progress=True, layout=layout)
    click.echo(f"wrote {', '.join(chosen)} under {root} in {layout} layout (details in {root / 'benchmark.json'})")


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

