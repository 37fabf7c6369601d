"""The `patchcore` command line: fit, predict, update, versions, rollback, monitor, evaluate, serve, export, experiments, datasets, demo.

Model options are not written here: they are generated from the estimators' declared parameters
(`patchcore.params`) when a command first needs them, so a new hyper-parameter is one edit and
`patchcore --help` never imports torch.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import click

from patchcore.errors import PatchCoreError
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS
from patchcore.params import CLI, HELP, PARSE, declared, value_type

INDEX_PREFIX = "index_"
MAX_ROWS_ECHOED = 50  # beyond this, a predict's rows are in scores.csv only, not on the terminal
SKIP_BAD_HELP = "Skip files that are not readable images (each listed, with why) instead of stopping at the first."


class _Group(click.Group):
    """Turns library errors into one clear line and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (PatchCoreError, ValueError, FileNotFoundError) as error:
            raise click.ClickException(str(error)) from error


class _Parsed(click.ParamType):
    """A click type from a declaration's parse function; its ValueError becomes a usage error."""

    def __init__(self, parse: Callable[[str], Any]) -> None:
        self.parse, self.name = parse, parse.__name__

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _option(owner: type, field: dataclasses.Field, prefix: str = "") -> click.Option:
    """The option of one declared parameter; every default is None so only what the user typed is passed."""
    flag = "--" + (prefix + field.name).replace("_", "-")
    help_text = field.metadata[HELP]
    if field.default is not None and not prefix:
        help_text += f"  [default: {field.default}]"
    kind = value_type(owner, field)
    if kind is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}"], default=None, help=help_text)
    parse = field.metadata[PARSE] or kind
    click_type = parse if parse in (int, float, str) else _Parsed(parse)
    return click.Option([flag], type=click_type, default=None, help=help_text)


def _declared_options(names: Sequence[str] | None) -> list[click.Option]:
    """Options for the named parameters, or with None for every method's parameters, `--method` and
    the search-index settings (`--index-n-probe`, ...)."""
    from patchcore.methods import METHODS, PRESETS
    from patchcore.search import INDEXES

    fields: dict[str, tuple[type, dataclasses.Field]] = {}
    for method in METHODS.values():
        for field in declared(method):
            if field.metadata[CLI]:
                fields.setdefault(field.name, (method, field))
    if names is not None:
        return [_option(*fields[name]) for name in names]
    options = [click.Option(["--method"], type=click.Choice(sorted(METHODS)), default=None,
                            help="PatchCore, or the SPADE / PaDiM baselines on the same backbone.  [default: patchcore]"),
               click.Option(["--preset"], type=click.Choice(list(PRESETS)), default=None,
                            help="Named settings (options given besides win): " + "; ".join(
                                f"{name}: {_preset_flags(name)}" for name in PRESETS))]
    options += [_option(owner, field) for owner, field in fields.values()]
    index_fields: dict[str, tuple[type, dataclasses.Field]] = {}
    for index in INDEXES.values():
        for field in declared(index):
            index_fields.setdefault(field.name, (index, field))
    return options + [_option(owner, field, INDEX_PREFIX) for owner, field in index_fields.values()]


def _preset_flags(name: str) -> str:
    """A preset as the options it stands for, e.g. '--patch-size 1 --layers level1,level2'."""
    from patchcore.methods import PRESETS

    def shown(value: Any) -> str:
        if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            return "x".join(map(str, value))
        return ",".join(value) if isinstance(value, (tuple, list)) else str(value)

    return " ".join(f"--{key.replace('_', '-')} {shown(value)}" for key, value in PRESETS[name].items())


class _DeclaredCommand(click.Command):
    """A command whose options for declared parameters are generated on first use (parsing or --help)."""

    def __init__(self, *args, declared_names: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.declared_names, self.generated = declared_names, False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.generated:
            self.params.extend(_declared_options(self.declared_names))
            self.generated = True
        return super().get_params(ctx)


def _command(group: click.Group, declared_names: Sequence[str] | None = None, **kwargs):
    return group.command(cls=_DeclaredCommand, declared_names=declared_names, **kwargs)


@click.group(cls=_Group)
@click.version_option(package_name="patchcore")
def main() -> None:
    """PatchCore anomaly detection: fit on good images, then score and locate defects."""


def model_from_options(options: dict[str, Any]):
    """The detector the command-line options describe; an option the method does not use is an error,
    not silently ignored."""
    from patchcore.methods import get_method, preset_params
    from patchcore.search import make_index

    options = {name: value for name, value in options.items() if value is not None}
    method = get_method(options.pop("method", "patchcore"))
    if "preset" in options:
        try:
            options = {**preset_params(options.pop("preset"), method), **options}
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    index_settings = {name[len(INDEX_PREFIX):]: options.pop(name) for name in list(options)
                      if name.startswith(INDEX_PREFIX)}
    accepted = {field.name: field for field in declared(method)}
    unused = sorted(name for name in options if name not in accepted)
    if index_settings and "index" not in accepted:
        unused += [INDEX_PREFIX + name for name in index_settings]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise click.UsageError(f"not used by --method {method.method}: {flags}")
    if index_settings:
        options["index"] = make_index(options.get("index", accepted["index"].default), **index_settings)
    return method(progress=True, **options)


def model_factory(options: dict[str, Any]) -> Callable:
    """A picklable recipe for fresh models (Ray ships it to workers), checked once here."""
    model = model_from_options(options)
    return partial(type(model), **model.get_params(deep=False))


def _preset_names(ctx: click.Context, param: click.Parameter, text: str | None) -> list[str] | None:
    """`--ensemble`'s comma list as preset names, each known ('default': no preset), at least two."""
    from patchcore.methods import PRESETS

    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name != "default" and name not in PRESETS]
    if len(names) < 2 or unknown:
        raise click.BadParameter(f"give two or more of default, {', '.join(PRESETS)}"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""), ctx, param)
    return names


_ensemble_option = click.option(
    "--ensemble", "ensemble_presets", default=None, callback=_preset_names,
    help="One model per preset, comma-separated ('default': no preset), the other options shared, as one model "
         "whose scores and maps average the members', each normalised by its own good images. "
         "'small-defects,default' finds defects of a few pixels and wide ones (docs/results.md).")


def ensemble_factory(names: list[str], options: dict[str, Any]) -> Callable:
    """A picklable recipe for fresh ensembles of `--ensemble`'s presets, checked once here."""
    if options.get("preset") is not None:
        raise click.UsageError("--ensemble names each member's preset: drop --preset")
    members = [model_factory({**options, "preset": None if name == "default" else name}) for name in names]
    settings = {} if options.get("false_alarm_rate") is None else {"false_alarm_rate": options["false_alarm_rate"]}
    return partial(_new_ensemble, members, **settings)


def _new_ensemble(members: list[Callable], **settings):
    from patchcore.baselines.ensemble import Ensemble

    return Ensemble([make() for make in members], **settings)


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


def readable_images(files: Sequence, skip_bad: bool) -> list:
    """`files`, or with `skip_bad` those that decode, reporting the others; all unreadable is an error."""
    from patchcore.errors import ImageLoadError
    from patchcore.io.images import load_image

    if not skip_bad:
        return list(files)
    readable, bad = [], []
    for file in files:
        try:
            load_image(file)
            readable.append(file)
        except ImageLoadError as error:
            bad.append(str(error))
    report_skipped(bad)
    if not readable:
        raise click.ClickException(f"none of the {len(files)} file(s) is a readable image")
    return readable


def report_skipped(messages: Sequence[str]) -> None:
    if messages:
        click.echo(f"skipped {len(messages)} unreadable file(s):", err=True)
        for message in messages:
            click.echo(f"  {message}", err=True)


def load_categories(root: Path, categories: str | None) -> list:
    """The categories `--categories` names ('mvtec', a comma list, or all under ROOT), each checked
    before any long work starts."""
    from patchcore.data.categories import MVTEC_CATEGORIES, discover_categories, load_category

    if categories == "mvtec":
        names = list(MVTEC_CATEGORIES)
    else:
        names = categories.split(",") if categories else discover_categories(root)
    return [load_category(root, name) for name in names]


@_command(main)
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory to write (with --categories: a folder of them, one per category).")
@click.option("--categories", default=None,
              help="DATA_DIR is a root of categories: fit each ('all', 'mvtec' or a comma list) into OUT/NAME.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@click.option("--validation", "validation_dir", default=None, type=click.Path(path_type=Path),
              help="Independent good images (a folder) whose scores set the threshold, instead of a cross-fit.")
@_ensemble_option
@_ray_options
def fit(data_dir: Path, out_dir: Path, categories: str | None, skip_bad: bool, validation_dir: Path | None,
        ensemble_presets: list[str] | None, use_ray: bool, ray_address: str | None, ray_threads: int | None,
        **options) -> None:
    """Fit on the good images in DATA_DIR (a folder, searched recursively, or an MVTec category's train/good)."""
    from patchcore.io.outputs import check_writable_folder

    check_writable_folder(out_dir)
    if ensemble_presets is not None:
        fit_ensemble(data_dir, out_dir, ensemble_presets, categories, validation_dir, use_ray or ray_address, skip_bad,
                     options)
        return
    if categories is not None:
        if validation_dir is not None:
            raise click.UsageError("--validation goes with one folder; with --categories each category's own images are used")
        fit_many(data_dir, out_dir, categories, skip_bad, use_ray, ray_address, ray_threads, options)
        return
    if use_ray or ray_address:
        raise click.UsageError("--ray fits several categories in parallel: add --categories")
    from patchcore.core.patchcore import PatchCore
    from patchcore.io.images import collect_images

    files = collect_images(data_dir, training=True)  # a missing folder fails before the backbone loads
    validation = None if validation_dir is None else collect_images(validation_dir)
    model = model_from_options(options)
    model.fit(readable_images(files, skip_bad), validation=validation)
    model.save(out_dir)
    if isinstance(model, PatchCore):
        state = (f"memory bank {model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]} "
                 f"(from {model.n_patches_seen_} patches; features {model.extraction_seconds_:.1f} s, "
                 f"sampling {model.sampling_seconds_:.1f} s)")
    else:
        state = f"{model.method} model"
    click.echo(f"fitted on {model.n_train_images_} images: {state}; saved to {out_dir}")
    click.echo(working_size_line(model))
    echo_threshold(model)


def working_size_line(model) -> str:
    """What the network sees of the commonest training image: its size, the scale from the original, the tiles."""
    preprocessor, size = model.preprocessor_, model.training_size_
    working, network = preprocessor.working_size(size), preprocessor.network_size(size)
    across, down = working[0] / size[0], working[1] / size[1]
    if max(across, down) > 1.02 * min(across, down):  # an exact WIDTHxHEIGHT (e.g. the paper preset) squashes
        how = f"squashed: {across:.2f}x across, {down:.2f}x down"
    elif abs(across - 1) < 0.02:
        how = "native"
    else:
        how = f"{'enlarged' if across > 1 else 'shrunk'} {max(across, 1 / across):.2f}x"
    crop = f", centre {network[0]} x {network[1]} kept" if preprocessor.center_crop else ""
    tiles = len(preprocessor.tiles(network))
    return (f"inspects {size[0]} x {size[1]} images at {working[0]} x {working[1]} px ({how}{crop}), "
            f"{tiles} tile{'s' if tiles > 1 else ''} each; --image-size sets it")


def fit_ensemble(data_dir: Path, out_dir: Path, presets: list[str], categories: str | None, validation_dir: Path | None,
                 use_ray: bool, skip_bad: bool, options: dict[str, Any]) -> None:
    """`fit --ensemble`: one member per preset, the other options shared, saved as one model."""
    from patchcore.io.images import collect_images

    make_model = ensemble_factory(presets, options)
    for given, flag in ((categories, "--categories"), (validation_dir, "--validation"), (use_ray or None, "--ray")):
        if given is not None:
            raise click.UsageError(f"--ensemble fits one folder (`evaluate --ensemble` does categories): drop {flag}")
    files = collect_images(data_dir, training=True)
    model = make_model().fit(readable_images(files, skip_bad))
    model.save(out_dir)
    click.echo(f"fitted an ensemble of {len(model.members)} models ({', '.join(presets)}) on "
               f"{model.n_train_images_} images; saved to {out_dir}")
    for preset, member in zip(presets, model.members):
        click.echo(f"{preset}: {working_size_line(member)}")
    echo_threshold(model)


def echo_threshold(model) -> None:
    """How the good/defect threshold was set, and what limits it."""
    threshold = model.decision_threshold()
    if threshold is not None:
        click.echo(f"threshold {threshold.value:.4f} at {model.false_alarm_rate:.1%} false alarms, from "
                   f"{len(model.nominal_scores_)} nominal scores ({model.nominal_source_})")
    for warning in model.nominal_warnings():
        click.echo(f"warning: {warning}", err=True)


def fit_many(root: Path, out_dir: Path, categories: str, skip_bad: bool, use_ray: bool, ray_address: str | None,
             ray_threads: int | None, options: dict) -> None:
    """One model per category of ROOT, serially or as Ray tasks."""
    import torch

    from patchcore.apps.jobs import fit_category

    if skip_bad:
        raise click.UsageError("--skip-bad fits one folder; with --categories fix or remove the bad files")
    loaded = load_categories(root, None if categories == "all" else categories)
    make_model = model_factory(options)
    threads = ray_settings(use_ray, ray_address, ray_threads, torch.get_num_threads())
    if threads is None:
        finished = (fit_category(category, make_model, out_dir) for category in loaded)
    else:
        from patchcore.apps.distributed import fit_categories

        finished = fit_categories(loaded, make_model, out_dir, threads)
    for done in finished:
        click.echo(f"{done['category']}: fitted on {done['n_train_images']} images; saved to {done['model_dir']}")


@_command(main, declared_names=("device", "weights", "false_alarm_rate"))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for scores.csv, scores.json and heatmaps/.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@click.option("--heatmap-size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Heatmap overlays hold at most this many pixels squared, aspect kept (1024: about a megapixel); "
                   "0 writes them at each image's own size.")
@click.option("--no-heatmaps", is_flag=True, help="Write scores only.")
@click.option("--workers", type=int, default=2, show_default=True, help="With --ray: actors, each loading the model once.")
@_ray_options
def predict(model_dir: Path, images: tuple[Path, ...], out_dir: Path, device: str | None, weights: str | None,
            false_alarm_rate: float | None, skip_bad: bool, heatmap_size: int, no_heatmaps: bool, workers: int,
            use_ray: bool, ray_address: str | None, ray_threads: int | None) -> None:
    """Score IMAGES (files or folders, searched recursively) with the model in MODEL_DIR; write scores,
    decisions and heatmaps (heatmaps/NAME.png: the path below the inputs' common folder, '/' as '__').
    --false-alarm-rate overrides the model's."""
    import time

    from patchcore.apps.jobs import summary_line
    from patchcore.core.thresholds import validate_false_alarm_rate
    from patchcore.io.images import collect_images
    from patchcore.io.outputs import ScoresWriter, check_writable_folder, output_names

    check_writable_folder(out_dir)
    if false_alarm_rate is not None:
        validate_false_alarm_rate(false_alarm_rate)
    threads = ray_settings(use_ray, ray_address, ray_threads, 1)
    files = [file for file in collect_images(list(images)) if not is_inside(file, out_dir)]  # never our own outputs
    if not files:
        raise click.ClickException(f"no images to score outside the output folder {out_dir}")
    names = output_names(files)
    heatmaps_dir = None if no_heatmaps else out_dir
    heatmap_side = heatmap_size or None
    started = time.perf_counter()
    with ScoresWriter(out_dir) as scores:  # each row reaches scores.csv as soon as it is computed
        if threads is None:
            from patchcore.apps.jobs import predict_files
            from patchcore.methods import load_model

            model = load_model(model_dir, device=device, weights=weights)
            if false_alarm_rate is not None:
                model.false_alarm_rate = false_alarm_rate
            rows, skipped = predict_files(model, files, names, heatmaps_dir, skip_bad, progress=True,
                                          heatmap_side=heatmap_side, on_row=scores.add)
        else:
            if device not in (None, "cpu") or weights is not None:
                raise click.UsageError("--device and --weights are not used with --ray (actors load models on CPU)")
            if workers < 1:
                raise click.UsageError(f"--workers must be >= 1, got {workers}")
            from patchcore.apps.distributed import predict_on_actors, start_scorers

            scorers = start_scorers(model_dir, workers, threads, false_alarm_rate)
            rows, skipped = predict_on_actors(scorers, files, names, heatmaps_dir, skip_bad, heatmap_side=heatmap_side,
                                              on_row=scores.add, progress=True)
        report_skipped(skipped)
        if not rows:
            raise click.ClickException(f"none of the {len(files)} file(s) is a readable image")
        scores.finish()
    if len(rows) <= MAX_ROWS_ECHOED:
        for row in rows:
            click.echo(f"{row['score']:10.4f}  {row['decision'] or '(no threshold)':<14}  {row['image']}")
    heatmaps = "no heatmaps" if no_heatmaps else f"{len(rows)} heatmaps in {out_dir / 'heatmaps'}"
    click.echo(summary_line(rows, len(skipped), time.perf_counter() - started))
    click.echo(f"wrote {out_dir / 'scores.csv'} and {heatmaps}")


def is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def echo_metrics(result) -> None:
    pixel = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.1f}"
    pro = "n/a" if result.pro is None else f"{result.pro:.1f}"
    click.echo(f"  image AUROC {result.image_auroc:.1f}  pixel AUROC {pixel}  PRO {pro}")


@_command(main)
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--categories", default=None,
              help="Comma-separated subset, or 'mvtec' for the 15 MVTec AD categories (default: all under ROOT).")
@click.option("--out", "out_dir", default=Path("evaluation"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for results.json and results.md.")
@click.option("--save-maps", is_flag=True, help="Also write heatmap overlays of every test image.")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path),
              help="Also write report.html here: metrics, ROC, PRO, score histograms and hardest images.")
@_ensemble_option
@_ray_options
def evaluate(root: Path, categories: str | None, out_dir: Path, save_maps: bool, report_dir: Path | None,
             ensemble_presets: list[str] | None, use_ray: bool, ray_address: str | None, ray_threads: int | None,
             **options) -> None:
    """Fit and evaluate each category under ROOT (MVTec AD layout): AUROCs, PRO, time, memory."""
    import torch

    from patchcore.evaluation.evaluate import evaluate_category, write_results
    from patchcore.io.outputs import check_writable_folder

    check_writable_folder(out_dir)
    if report_dir is not None:
        check_writable_folder(report_dir, "--report")
    loaded = load_categories(root, categories)
    # A bad option fails before the first category.
    make_model = model_factory(options) if ensemble_presets is None else ensemble_factory(ensemble_presets, options)
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


@_command(main, declared_names=("backbone", "weights", "seed"))
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
    from patchcore.io.outputs import check_writable_folder

    check_writable_folder(out_dir)
    defaults = PatchCore()
    loaded = load_categories(root, categories)
    command = "patchcore " + " ".join(sys.argv[1:])
    for chosen in EXPERIMENTS if name == "all" else [name]:
        table = run_experiment(chosen, loaded, out_dir, command, seed=defaults.seed if seed is None else seed,
                               backbone=backbone or defaults.backbone, weights=weights, seeds=seeds,
                               log=lambda line: click.echo(line, err=True))
        click.echo(f"{table.title}\n{table.markdown()}\nwrote {out_dir / (chosen + '.md')}")


@_command(main, declared_names=("device",))
@click.argument("models", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 127.0.0.1 keeps the service on this machine.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", envvar="PATCHCORE_API_KEY", default=None,
              help="Require this key in the X-API-Key header (or set PATCHCORE_API_KEY).")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True, help="Largest accepted request body.")
@click.option("--max-megapixels", type=click.FloatRange(min=0, min_open=True), default=40.0, show_default=True,
              help="Larger images get 413, found from their header before any pixel is decoded.")
@click.option("--body-timeout", type=float, default=30.0, show_default=True,
              help="Seconds a client may pause while sending its upload before getting 408.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="'info' logs every request (access log); 'warning' only problems.")
@click.option("--reload-interval", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds between looks for new versions of the model directories (0: never reload).")
def serve(models: tuple[str, ...], host: str, port: int, api_key: str | None, max_upload_mb: float,
          max_megapixels: float, body_timeout: float, log_level: str, reload_interval: float,
          device: str | None) -> None:
    """Serve saved models over HTTP: MODELS are model directories, or NAME=DIR to choose their names.

    POST /predict?model=NAME with an image file; POST /feedback?model=NAME with a falsely flagged good
    image; GET /health, /metrics (Prometheus), /models, /model?model=NAME, /feedback, /docs (served
    offline; the schema is /openapi.json); the web page is at /. New versions written to a model
    directory (`patchcore update`, `rollback`, `fit`) are loaded and swapped in between requests.
    """
    import logging
    import socket

    import uvicorn

    from patchcore.apps.service import create_app, load_models

    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # bound before the models load, so a busy port fails at once and in one line
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        reason = "already in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None
    try:
        loaded = load_models(list(models), device=device)
    except ValueError as error:
        listening.close()
        raise click.UsageError(str(error)) from error
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")  # as uvicorn's lines
    app = create_app(loaded, max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                     body_timeout=body_timeout, max_megapixels=max_megapixels, reload_interval=reload_interval)
    click.echo(f"serving {', '.join(loaded)} on http://{host}:{port}/")
    # Idle keep-alive connections are closed after 5 s; at most 64 requests are in flight at once.
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5, limit_concurrency=64)
    uvicorn.Server(config).run(sockets=[listening])


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
    """Export a saved PatchCore model as one ONNX graph: preprocessed images (or, for models that tile
    or have a region of interest, tiles) in, scores and maps (patch scores) out."""
    from patchcore.apps.export import check_against_pytorch, export_onnx, exports_tiles, network_size
    from patchcore.core.patchcore import PatchCore
    from patchcore.methods import load_model

    model = load_model(model_dir, device="cpu")
    if not isinstance(model, PatchCore):
        raise click.UsageError(f"{model_dir}: only PatchCore models export to ONNX, not {model.method}")
    try:
        path = export_onnx(model, out_file or model_dir / "model.onnx", max_bank_rows=max_bank_rows)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if exports_tiles(model):
        tiles = len(model.preprocessor_.tiles(network_size(model)))
        click.echo(f"a per-tile graph ({tiles} tile(s) per image{', a region of interest' if model.roi_mask_ is not None else ''}): "
                   "combine its outputs as the metadata's `tiling` says, or run patchcore.apps.export.predict_with_onnx")
    if check:
        gaps = check_against_pytorch(model, path)
        click.echo("onnxruntime vs. PyTorch on random inputs, largest differences: "
                   + ", ".join(f"{name} {gap:.2e}" for name, gap in gaps.items()))


@_command(main, declared_names=("device",))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--from-feedback", is_flag=True, help="Also add the images operators marked as good (MODEL_DIR/feedback).")
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP_VERSIONS, show_default=True, help="Earlier versions kept.")
def update(model_dir: Path, images: tuple[Path, ...], from_feedback: bool, keep: int, device: str | None) -> None:
    """Add good IMAGES (files or folders) to the PatchCore model in MODEL_DIR without refitting: new patches
    join the bank where it does not already cover them, the threshold takes their nominal scores, and the
    model before the update is kept as a version (`patchcore versions`, `patchcore rollback`)."""
    from patchcore.core.patchcore import PatchCore
    from patchcore.io.images import collect_images
    from patchcore.io.persistence import feedback_files
    from patchcore.methods import load_model

    files = collect_images(list(images)) if images else []
    waiting = feedback_files(model_dir) if from_feedback else []
    feedback = readable_images(waiting, skip_bad=True) if waiting else []
    if not files and not feedback:
        raise click.UsageError("nothing to add: give IMAGES, or --from-feedback with images in the feedback folder")
    model = load_model(model_dir, device=device)
    if not isinstance(model, PatchCore):
        raise click.UsageError(f"{model_dir}: only PatchCore models update without a refit, not {model.method}")
    model.progress = True
    before = model.memory_bank_.shape[0], model.decision_threshold()
    model.partial_fit([*files, *feedback])
    if feedback:
        model.change_["from_feedback"] = [f.name for f in feedback]
    model.save(model_dir, keep_versions=keep)
    for file in feedback:  # applied: the saved version lists them
        file.unlink(missing_ok=True)
    change = model.manifest_["change"]
    click.echo(f"version {model.manifest_['version']}: added {change['images_added']} images"
               f"{f' ({len(feedback)} from feedback)' if feedback else ''}, {change['images_held_out']} held out; "
               f"bank {before[0]} -> {model.memory_bank_.shape[0]} rows")
    if before[1] is not None and model.decision_threshold() is not None:
        click.echo(f"threshold {before[1].value:.4f} -> {model.decision_threshold().value:.4f}")
    echo_threshold(model)


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
def versions(model_dir: Path) -> None:
    """List the versions of the model in MODEL_DIR: the current one and those kept."""
    from patchcore.io.persistence import list_versions

    for entry in list_versions(model_dir):
        change = entry["change"] or {}
        what = ", ".join(f"{key} {value}" for key, value in change.items() if key != "action")
        click.echo(f"{'*' if entry['current'] else ' '} {entry['version']:>3}  saved {entry['saved']}  "
                   f"{change.get('action', 'save'):<8} {what}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("version", type=int)
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP_VERSIONS, show_default=True, help="Earlier versions kept.")
def rollback(model_dir: Path, version: int, keep: int) -> None:
    """Make kept VERSION the current model of MODEL_DIR again (verified first; the replaced one is kept)."""
    from patchcore.io.persistence import rollback as roll_back

    new = roll_back(model_dir, version, keep_versions=keep)
    click.echo(f"version {new} of {model_dir} is version {version}'s model")


@_command(main, declared_names=("device",))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
def monitor(model_dir: Path, images: tuple[Path, ...], device: str | None) -> None:
    """Score a batch of recent IMAGES and compare the scores with the model's nominal ones: drift or not
    (the same statistics as the service's /metrics and /health). Exits 1 on a drift warning."""
    from patchcore.methods import load_model
    from patchcore.monitoring import model_drift

    model = load_model(model_dir, device=device)
    report = model_drift(model, model.score_samples(list(images)))
    share = "n/a" if report.share_above_threshold is None else f"{report.share_above_threshold:.1%}"
    psi = "n/a" if report.psi is None else f"{report.psi:.3f}"
    click.echo(f"{report.n_recent} images: {share} above the threshold (nominal {model.false_alarm_rate:.1%}), "
               f"PSI {psi}")
    click.echo(("DRIFT: " if report.warning else "ok: ") + report.reason)
    if report.warning:
        sys.exit(1)


@main.command()
def backbones() -> None:
    """List the backbones, their default taps and where their weights come from."""
    from patchcore.backbones import BACKBONES, DEFAULT_BACKBONE

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
    """Write the real-data offline benchmarks under ROOT: texture crops and 2000 x 720 panels with synthetic
    defects, ELPV cells and 1200 x 900 modules with real (and small synthetic) defects."""
    from patchcore.data.offline import OFFLINE_CATEGORIES, build_offline_benchmarks, install_packages, missing_packages

    chosen = tuple(categories.split(",")) if categories else OFFLINE_CATEGORIES
    if install:
        install_packages(missing_packages(chosen))
    build_offline_benchmarks(root, chosen, seed=seed, progress=True)
    click.echo(f"wrote {', '.join(chosen)} under {root} (details in {root / 'benchmark.json'})")


@_command(main, declared_names=("device",))
@click.option("--out", "out_dir", default=Path("demo_output"), show_default=True, type=click.Path(path_type=Path))
@click.option("--category", default="gravel", show_default=True, type=click.Choice(["brick", "grass", "gravel"]))
def demo(out_dir: Path, category: str, device: str | None) -> None:
    """Fit on real texture photos shipped with scikit-image and find synthetic defects on held-out crops."""
    from sklearn.metrics import roc_auc_score

    from patchcore.apps.jobs import predict_files
    from patchcore.core.patchcore import PatchCore
    from patchcore.data.offline import build_offline_benchmarks
    from patchcore.io.images import collect_images
    from patchcore.io.outputs import check_writable_folder, output_names, write_scores

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
