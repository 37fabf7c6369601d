"""The `patchcore` command line: fit, predict, demo, datasets and backbone listing."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import click

from patchcore.backbones import BACKBONES, DEFAULT_BACKBONE
from patchcore.data.categories import Category
from patchcore.errors import ImageLoadError, PatchCoreError
from patchcore.evaluation.experiments import EXPERIMENTS
from patchcore.io.images import IMAGE_SUFFIXES, expand_image_inputs, list_images, load_image
from patchcore.core.detector import Detector
from patchcore.methods import METHODS, get_method, load_model
from patchcore.core.patchcore import PatchCore
from patchcore.io.outputs import output_names, prediction_row, write_heatmaps, write_scores
from patchcore.search import INDEX_KINDS
from patchcore.core.thresholds import DEFAULT_FALSE_ALARM_RATE, validate_false_alarm_rate


class _Group(click.Group):
    """Turns library errors into one clear line and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (PatchCoreError, ValueError, FileNotFoundError) as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_Group)
@click.version_option(package_name="patchcore")
def main() -> None:
    """PatchCore anomaly detection: fit on good images, then score and locate defects."""


def feature_dim_value(text: str | int) -> int | str:
    """--feature-dim: a positive integer or 'raw'."""
    if text == "raw" or isinstance(text, int):
        return text
    if not str(text).isdigit() or int(text) < 1:
        raise click.BadParameter(f"{text!r}: give a positive integer or 'raw'")
    return int(text)


def _model_options(function):
    options = [
        click.option("--method", default="patchcore", show_default=True, type=click.Choice(sorted(METHODS)),
                     help="PatchCore, or the SPADE / PaDiM baselines on the same backbone."),
        click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
                     type=click.Choice(sorted(BACKBONES)), help="Feature extractor (see `patchcore backbones`)."),
        click.option("--weights", default=None,
                     help="Backbone weights: a state-dict file, 'torch-hub', or 'random'. Default: the packaged ones."),
        click.option("--layers", default=None, help="Comma-separated feature taps, e.g. layer2,layer3."),
        click.option("--feature-dim", type=feature_dim_value, default=None,
                     help="Patch feature dimension, levels pooled to equal shares; 'raw' concatenates every "
                          "tapped channel, as anomalib does (default per backbone: raw for Lite0)."),
        click.option("--patch-size", type=int, default=3, show_default=True, help="Neighbourhood p of Eq. 1."),
        click.option("--patch-stride", type=int, default=1, show_default=True, help="Stride s on the patch grid (Eq. 3)."),
        click.option("--sampler", default="greedy_coreset", show_default=True,
                     type=click.Choice(["greedy_coreset", "random", "learned_proxies", "none"])),
        click.option("--coreset-ratio", type=float, default=0.1, show_default=True,
                     help="Share of patches kept in the memory bank."),
        click.option("--index", default="ivf", show_default=True, type=click.Choice(list(INDEX_KINDS)),
                     help="Nearest-neighbour search: ivf (default: codes in the visited cells, best candidates re-ranked exactly), exact, ivfflat, ivfpq, hnsw."),
        click.option("--reweight/--no-reweight", default=True, show_default=True, help="Eq. 7 score reweighting."),
        click.option("--num-neighbours", type=int, default=9, show_default=True,
                     help="b of Eq. 7 (1: no reweighting)."),
        click.option("--n-nearest-images", type=int, default=50, show_default=True,
                     help="SPADE: nearest training images per test image."),
        click.option("--n-channels", type=int, default=100, show_default=True,
                     help="PaDiM: random channels kept for the Gaussians."),
        click.option("--image-size", type=int, default=224, show_default=True, help="Centre-crop size in pixels."),
        click.option("--holdout-fraction", type=float, default=0.1, show_default=True,
                     help="Share of good images held out to measure nominal scores (the threshold's basis)."),
        click.option("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE, show_default=True,
                     help="Share of held-out good images the good/defect threshold may flag."),
        click.option("--batch-size", type=int, default=8, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _ray_options(function):
    options = [
        click.option("--ray", "use_ray", is_flag=True,
                     help="Run in parallel on Ray (a local instance unless --ray-address); pip install 'patchcore[ray]'."),
        click.option("--ray-address", default=None, help="Address of a running Ray cluster (implies --ray)."),
        click.option("--ray-threads", type=int, default=None,
                     help="Threads per Ray task or actor (default: as this process for fit/evaluate, so results "
                          "are bit-identical to a serial run; 1 for predict)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def ray_settings(use_ray: bool, ray_address: str | None, ray_threads: int | None, default_threads: int) -> int | None:
    """Connect to Ray when asked; the threads each task uses, or None for a serial run."""
    if not (use_ray or ray_address):
        if ray_threads is not None:
            raise click.UsageError("--ray-threads needs --ray or --ray-address")
        return None
    from patchcore.apps.distributed import connect

    connect(ray_address)
    threads = default_threads if ray_threads is None else ray_threads
    if threads < 1:
        raise click.UsageError(f"--ray-threads must be >= 1, got {threads}")
    return threads


def model_factory(options: dict, explicit: Sequence[str]) -> Callable[[], Detector]:
    """A picklable recipe for fresh models (Ray ships it to workers), checked once here."""
    model = model_from_options(dict(options), explicit)
    return partial(type(model), **model.get_params())


def model_from_options(options: dict, explicit: Sequence[str] = ()) -> Detector:
    """The detector the options describe; an option given on the command line that the method
    does not use is an error rather than silently ignored."""
    options = dict(options)
    method = get_method(options.pop("method"))
    layers = options.pop("layers")
    accepted = set(inspect.signature(method.__init__).parameters)
    ignored = sorted(name for name in explicit if name in options and name not in accepted)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise click.UsageError(f"not used by --method {method.method}: {flags}")
    params = {name: value for name, value in options.items() if name in accepted}
    return method(layers=layers.split(",") if layers else None, progress=True, **params)


def explicit_options() -> list[str]:
    """Names of the options the user typed, not left at their defaults."""
    context = click.get_current_context()
    return [name for name in context.params
            if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]


PREDICT_CHUNK = 64

SKIP_BAD_HELP = "Skip files that are not readable images (each listed, with why) instead of stopping at the first."


def readable_images(files: Sequence[Path], skip_bad: bool) -> list[Path]:
    """`files`, or with `skip_bad` those that decode, reporting the others; all unreadable is an error."""
    if not skip_bad:
        return list(files)
    readable, bad = [], []
    for file in files:
        try:
            load_image(file)
            readable.append(file)
        except ImageLoadError as error:
            bad.append(str(error))
    if bad:
        click.echo(f"skipped {len(bad)} unreadable file(s):", err=True)
        for message in bad:
            click.echo(f"  {message}", err=True)
    if not readable:
        raise click.ClickException(f"none of the {len(files)} file(s) is a readable image")
    return readable


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory to write (with --categories: a folder of them, one per category).")
@click.option("--categories", default=None,
              help="DATA_DIR is a root of categories: fit each ('all', 'mvtec' or a comma list) into OUT/NAME.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@_ray_options
@_model_options
def fit(data_dir: Path, out_dir: Path, categories: str | None, skip_bad: bool, use_ray: bool,
        ray_address: str | None, ray_threads: int | None, **options) -> None:
    """Fit on the good images in DATA_DIR (a folder, or an MVTec category whose train/good is used)."""
    if categories is not None:
        fit_many(data_dir, out_dir, categories, skip_bad, use_ray, ray_address, ray_threads, options)
        return
    if use_ray or ray_address:
        raise click.UsageError("--ray fits several categories in parallel: add --categories")
    model = model_from_options(options, explicit_options())
    model.fit(readable_images(expand_image_inputs(data_dir), skip_bad))
    model.save(out_dir)
    if isinstance(model, PatchCore):
        state = (f"memory bank {model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]} "
                 f"(from {model.n_patches_seen_} patches)")
    else:
        state = f"{model.method} model"
    click.echo(f"fitted on {model.n_train_images_} images: {state}; saved to {out_dir}")


def fit_many(root: Path, out_dir: Path, categories: str, skip_bad: bool, use_ray: bool, ray_address: str | None,
             ray_threads: int | None, options: dict) -> None:
    """One model per category of ROOT, serially or as Ray tasks."""
    import torch

    if skip_bad:
        raise click.UsageError("--skip-bad fits one folder; with --categories fix or remove the bad files")
    loaded = load_categories(root, None if categories == "all" else categories)
    make_model = model_factory(options, explicit_options())
    threads = ray_settings(use_ray, ray_address, ray_threads, torch.get_num_threads())
    if threads is None:
        for category in loaded:
            model = make_model().fit(list(category.train_images))
            saved = model.save(out_dir / category.name)
            click.echo(f"{category.name}: fitted on {model.n_train_images_} images; saved to {saved}")
        return
    from patchcore.apps.distributed import fit_categories

    for done in fit_categories(loaded, make_model, out_dir, threads):
        click.echo(f"{done['category']}: fitted on {done['n_train_images']} images; saved to {done['model_dir']}")


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; folders searched recursively for images."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += found if found else list_images(path)  # list_images raises the clear "no images" error
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for scores.csv, scores.json and heatmaps/.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--weights", default=None, help="Backbone weights file, if not where the model was fitted.")
@click.option("--false-alarm-rate", type=float, default=None,
              help="Override the model's rate of held-out good images the threshold may flag.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@click.option("--workers", type=int, default=2, show_default=True, help="With --ray: actors, each loading the model once.")
@_ray_options
def predict(model_dir: Path, images: tuple[Path, ...], out_dir: Path, device: str | None, weights: str | None,
            false_alarm_rate: float | None, skip_bad: bool, workers: int, use_ray: bool, ray_address: str | None,
            ray_threads: int | None) -> None:
    """Score IMAGES (files or folders) with the model in MODEL_DIR; write scores, decisions and heatmaps."""
    if false_alarm_rate is not None:
        validate_false_alarm_rate(false_alarm_rate)
    threads = ray_settings(use_ray, ray_address, ray_threads, 1)
    files = readable_images(collect_images(images), skip_bad)
    names = output_names(files)
    if threads is None:
        model = load_model(model_dir, device=device, weights=weights)
        model.progress = True
        if false_alarm_rate is not None:
            model.false_alarm_rate = false_alarm_rate
        rows = []
        for start in range(0, len(files), PREDICT_CHUNK):  # a chunk of maps in memory at a time
            predictions = model.predict(files[start : start + PREDICT_CHUNK])
            write_heatmaps(model, predictions, names[start : start + PREDICT_CHUNK], out_dir)
            rows += [prediction_row(p) for p in predictions]
    else:
        if device not in (None, "cpu") or weights is not None:
            raise click.UsageError("--device and --weights are not used with --ray (actors load models on CPU)")
        if workers < 1:
            raise click.UsageError(f"--workers must be >= 1, got {workers}")
        from patchcore.apps.distributed import predict_files, start_scorers

        scorers = start_scorers(model_dir, workers, threads, false_alarm_rate)
        rows = [row for chunk in predict_files(scorers, files, names, out_dir) for row in chunk]
    write_scores(rows, out_dir)
    for row in rows:
        click.echo(f"{row['score']:10.4f}  {row['decision'] or '(no threshold)':<14}  {row['image']}")
    click.echo(f"wrote {out_dir / 'scores.csv'} and {len(rows)} heatmaps in {out_dir / 'heatmaps'}")


def echo_metrics(result) -> None:
    pixel = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.1f}"
    pro = "n/a" if result.pro is None else f"{result.pro:.1f}"
    click.echo(f"  image AUROC {result.image_auroc:.1f}  pixel AUROC {pixel}  PRO {pro}")


def load_categories(root: Path, categories: str | None) -> list[Category]:
    """The categories `--categories` names ('mvtec', a comma list, or all under ROOT), each checked
    before any long work starts."""
    from patchcore.data.categories import MVTEC_CATEGORIES, discover_categories, load_category

    if categories == "mvtec":
        names = list(MVTEC_CATEGORIES)
    else:
        names = categories.split(",") if categories else discover_categories(root)
    return [load_category(root, name) for name in names]


@main.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("evaluation"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for results.json and results.md.")
@click.option("--save-maps", is_flag=True, help="Also write heatmap overlays of every test image.")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path),
              help="Also write report.html here: metrics, ROC, PRO, score histograms and hardest images.")
@_ray_options
@_model_options
def evaluate(root: Path, categories: str | None, out_dir: Path, save_maps: bool, report_dir: Path | None,
             use_ray: bool, ray_address: str | None, ray_threads: int | None, **options) -> None:
    """Fit and evaluate each category under ROOT (MVTec AD layout): AUROCs, PRO, time, memory."""
    import sys

    from patchcore.evaluation.evaluate import evaluate_category, write_results

    import torch

    loaded = load_categories(root, categories)
    make_model = model_factory(options, explicit_options())  # a bad option fails before the first category
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


@main.command()
@click.argument("name", type=click.Choice([*EXPERIMENTS, "all"]))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("experiments"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for NAME.md and NAME.json.")
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, type=click.Choice(sorted(BACKBONES)))
@click.option("--weights", default=None, help="Backbone weights: a state-dict file, 'torch-hub', or 'random'.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", type=int, default=3, show_default=True, help="Low-shot: random draws of training images.")
def experiment(name: str, root: Path, categories: str | None, out_dir: Path, backbone: str, weights: str | None,
               seed: int, seeds: int) -> None:
    """Run one of the paper's experiments (or all) on the categories under ROOT; write its table."""
    import sys

    from patchcore.evaluation.experiments import run_experiment

    loaded = load_categories(root, categories)
    command = "patchcore " + " ".join(sys.argv[1:])
    for chosen in EXPERIMENTS if name == "all" else [name]:
        table = run_experiment(chosen, loaded, out_dir, command, seed=seed, backbone=backbone, weights=weights, seeds=seeds,
                               log=lambda line: click.echo(line, err=True))
        click.echo(f"{table.title}\n{table.markdown()}\nwrote {out_dir / (chosen + '.md')}")


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 127.0.0.1 keeps the service on this machine.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", envvar="PATCHCORE_API_KEY", default=None,
              help="Require this key in the X-API-Key header (or set PATCHCORE_API_KEY).")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True, help="Largest accepted request body.")
@click.option("--body-timeout", type=float, default=30.0, show_default=True,
              help="Seconds a client may pause while sending its upload before getting 408.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def serve(models: tuple[str, ...], host: str, port: int, api_key: str | None, max_upload_mb: float,
          body_timeout: float, device: str | None) -> None:
    """Serve saved models over HTTP: MODELS are model directories, or NAME=DIR to choose their names.

    POST /predict?model=NAME with an image file; GET /health, /models, /model?model=NAME, /docs;
    the web page is at /.
    """
    import uvicorn

    from patchcore.apps.service import create_app, load_models

    try:
        loaded = load_models(list(models), device=device)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    app = create_app(loaded, max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                     body_timeout=body_timeout)
    click.echo(f"serving {', '.join(loaded)} on http://{host}:{port}/")
    # Idle keep-alive connections are closed after 5 s; at most 64 requests are in flight at once.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5, limit_concurrency=64)


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", "out_file", default=None, type=click.Path(path_type=Path),
              help="File to write (default: MODEL_DIR/model.onnx).")
@click.option("--max-bank-rows", type=int, default=100_000, show_default=True,
              help="Refuse larger memory banks: every patch is compared with every entry in the graph.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the graph with onnxruntime on random inputs and compare with PyTorch.")
def export(model_dir: Path, export_format: str, out_file: Path | None, max_bank_rows: int, check: bool) -> None:
    """Export a saved PatchCore model as one ONNX graph: preprocessed images in, scores and maps out."""
    from patchcore.apps.export import check_against_pytorch, export_onnx

    model = load_model(model_dir, device="cpu")
    if not isinstance(model, PatchCore):
        raise click.UsageError(f"{model_dir}: only PatchCore models export to ONNX, not {model.method}")
    try:
        path = export_onnx(model, out_file or model_dir / "model.onnx", max_bank_rows=max_bank_rows)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if check:
        score_gap, map_gap = check_against_pytorch(model, path)
        click.echo(f"onnxruntime vs. PyTorch on random inputs: largest score difference {score_gap:.2e}, "
                   f"largest map difference {map_gap:.2e}")


@main.command()
def backbones() -> None:
    """List the backbones, their default taps and where their weights come from."""
    for name, spec in sorted(BACKBONES.items()):
        marker = "*" if name == DEFAULT_BACKBONE else " "
        click.echo(f"{marker} {name:20s} taps {','.join(spec.default_layers):20s} dim {spec.default_feature_dim!s:>5}  {spec.description}")


@main.group()
def datasets() -> None:
    """Build benchmark datasets in MVTec AD layout."""


@datasets.command("build-offline")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None, help="Comma-separated subset (default: all that can be built).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--install", is_flag=True, help="pip-install missing source packages (scikit-image, elpv-dataset).")
def build_offline(root: Path, categories: str | None, seed: int, install: bool) -> None:
    """Write the real-data offline benchmarks (textures with synthetic defects, ELPV) under ROOT."""
    from patchcore.data.offline import (
        OFFLINE_CATEGORIES,
        build_offline_benchmarks,
        install_packages,
        missing_packages,
    )

    chosen = tuple(categories.split(",")) if categories else OFFLINE_CATEGORIES
    if install:
        install_packages(missing_packages(chosen))
    build_offline_benchmarks(root, chosen, seed=seed, progress=True)
    click.echo(f"wrote {', '.join(chosen)} under {root} (details in {root / 'benchmark.json'})")


@main.command()
@click.option("--out", "out_dir", default=Path("demo_output"), show_default=True, type=click.Path(path_type=Path))
@click.option("--category", default="brick", show_default=True, type=click.Choice(["brick", "grass", "gravel"]))
@click.option("--device", default=None)
def demo(out_dir: Path, category: str, device: str | None) -> None:
    """Fit on real texture photos shipped with scikit-image and find synthetic defects on held-out crops."""
    from patchcore.data.offline import build_offline_benchmarks

    data_root = build_offline_benchmarks(out_dir / "data", (category,))
    model = PatchCore(device=device, progress=True).fit(data_root / category)
    model.save(out_dir / "model")
    files = collect_images([data_root / category / "test"])
    predictions = model.predict(files)
    write_heatmaps(model, predictions, output_names(files), out_dir / "predictions")
    write_scores([prediction_row(p) for p in predictions], out_dir / "predictions")
    good = [p.score for p, f in zip(predictions, files) if f.parent.name == "good"]
    bad = [p.score for p, f in zip(predictions, files) if f.parent.name != "good"]
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score([0] * len(good) + [1] * len(bad), good + bad)
    click.echo(
        f"{category}: {len(good)} good test crops (mean score {sum(good) / len(good):.3f}), "
        f"{len(bad)} with synthetic defects (mean {sum(bad) / len(bad):.3f}); image AUROC {100 * auroc:.1f}\n"
        f"model: {out_dir / 'model'}  heatmaps: {out_dir / 'predictions' / 'heatmaps'}"
    )
