"""What the commands share: the root group, model options generated from the estimators' declared parameters
(`patchcore.params`, when a command first needs them, so a new hyper-parameter is one edit and `patchcore --help`
never imports torch), the Ray and ensemble options, and the lines every command prints the same way."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from patchcore.errors import PatchCoreError, PatchCoreWarning
from patchcore.params import CLI, HELP, PARSE, declared, value_type

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


def _option(owner: type, field: dataclasses.Field, prefix: str = "", default_help: str | None = None) -> click.Option:
    """The option of one declared parameter; every default is None so only what the user typed is passed."""
    flag = "--" + (prefix + field.name).replace("_", "-")
    help_text = field.metadata[HELP]
    if default_help is not None:
        help_text += f"  [default: {default_help}]"
    elif field.default is not None and not prefix:
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
    from patchcore.methods import INDEX_PREFIX, METHODS, PRESETS
    from patchcore.search import INDEXES

    fields: dict[str, tuple[type, dataclasses.Field]] = {}
    for method in METHODS.values():
        for field in declared(method):
            if field.metadata[CLI]:
                fields.setdefault(field.name, (method, field))
    if names is not None:  # a command on a saved model: its own settings are the defaults
        return [_option(*fields[name], default_help="the model's own" if name == "false_alarm_rate" else None)
                for name in names]
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


def declared_command(group: click.Group, declared_names: Sequence[str] | None = None, **kwargs):
    return group.command(cls=_DeclaredCommand, declared_names=declared_names, **kwargs)


@click.group(cls=_Group)
@click.version_option(package_name="patchcore")
def main() -> None:
    """PatchCore anomaly detection: fit on good images, then score and locate defects."""
    # Before torch and faiss load OpenMP (the commands import them): idle OpenMP threads sleep instead of
    # spinning. With two other busy processes on 2 cores, a fit's IVF index build took 1.0-49.5 s spinning and
    # 0.4 s sleeping (docs/results.md). A value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _show_library_warnings_as_lines()


def _show_library_warnings_as_lines() -> None:
    """The library's warnings (PatchCoreWarning) as one `warning: ...` line on stderr, every time, without the file
    and line a Python warning names; other warnings as Python shows them."""
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", PatchCoreWarning)


_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, PatchCoreWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def build(options: dict[str, Any]):
    """`methods.build_model` of the command's options, with progress bars; a misuse is a usage error naming flags."""
    from patchcore.methods import UnusedOptionsError, build_model

    try:
        return build_model({**options, "progress": True})
    except UnusedOptionsError as error:
        flags = ", ".join("--" + name.replace("_", "-") for name in error.names)
        raise click.UsageError(f"not used by --method {error.method}: {flags}") from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def factory(options: dict[str, Any], ensemble_presets: list[str] | None = None) -> Callable:
    """A picklable recipe for fresh models (or ensembles of `--ensemble`'s presets) of the options, checked once here."""
    from patchcore.methods import ensemble_factory, model_factory

    build(options)  # a misuse is reported with flags before anything runs
    try:
        if ensemble_presets is None:
            return model_factory({**options, "progress": True})
        return ensemble_factory(ensemble_presets, {**options, "progress": True})
    except ValueError as error:
        raise click.UsageError(f"--ensemble: {error}") from None


def _preset_names(ctx: click.Context, param: click.Parameter, text: str | None) -> list[str] | None:
    """`--ensemble`'s comma list as preset names, each known ('default': no preset), at least two."""
    from patchcore.methods import DEFAULT_MEMBER, PRESETS

    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name != DEFAULT_MEMBER and name not in PRESETS]
    if len(names) < 2 or unknown:
        raise click.BadParameter(f"give two or more of {DEFAULT_MEMBER}, {', '.join(PRESETS)}"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""), ctx, param)
    return names


ensemble_option = click.option(
    "--ensemble", "ensemble_presets", default=None, callback=_preset_names,
    help="One model per preset, comma-separated ('default': no preset), the other options shared, as one model "
         "whose scores and maps average the members', each normalised by its own good images. "
         "'small-defects,default' finds defects of a few pixels and wide ones (docs/results.md).")


def ray_options(function):
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


def report_skipped(messages: Sequence[str]) -> None:
    if messages:
        click.echo(f"skipped {len(messages)} unreadable file(s):", err=True)
        for message in messages:
            click.echo(f"  {message}", err=True)


def layout_options(function):
    """--layout and the labelled folder's --good-dir / --defect-dirs / --mask-dir / --good-test-dir."""
    # The names are checked where the layouts are declared (patchcore.data.layouts): importing that here would
    # load numpy and Pillow for every command's --help.
    options = [
        click.option("--layout", default=None,
                     help="The dataset's layout: mvtec, mvtec_ad2, mvtec_loco, btad, visa, kolektorsdd2, folder or "
                          "csv (default: recognised from ROOT; a .csv ROOT is a manifest)."),
        click.option("--good-dir", default=None, help="Labelled folder: the good images' folder under ROOT."),
        click.option("--defect-dirs", default=None, help="Labelled folder: defect folders, comma-separated."),
        click.option("--mask-dir", default=None, help="Labelled folder: the masks' folder (<stem>.png or "
                     "<stem>_mask.png, also under a folder named like the defect folder)."),
        click.option("--good-test-dir", default=None, help="Labelled folder: good test images (default: the last "
                     "20 % of the good images by name)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


LAYOUT_OPTION_NAMES = ("layout", "good_dir", "defect_dirs", "mask_dir", "good_test_dir")


def load_categories(root: Path, categories: str | None, layout: str | None = None, **folder_options) -> list:
    """The categories `--categories` names ('mvtec', a comma list, or all under ROOT) in ROOT's layout, each
    checked before any long work starts."""
    from patchcore.data.categories import MVTEC_CATEGORIES
    from patchcore.data.layouts import load_dataset

    if categories == "mvtec":
        names, layout = list(MVTEC_CATEGORIES), layout or "mvtec"
    else:
        names = categories.split(",") if categories else None
    return load_dataset(root, layout, names, **folder_options)


def echo_threshold(model, false_alarm_rate: float | None = None) -> None:
    """How the good/defect threshold was set, and what limits it."""
    rate = model.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
    threshold = model.decision_threshold(rate)
    if threshold is not None:
        click.echo(f"threshold {threshold.describe()}, from {len(model.nominal_scores_)} nominal scores "
                   f"({model.nominal_source_})")
    excluded = getattr(model, "excluded_images_", [])
    if excluded:
        click.echo(f"left out of the model as suspicious ({len(excluded)}): " + ", ".join(excluded))
    for warning in model.nominal_warnings(rate):
        click.echo(f"warning: {warning}", err=True)



def is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def echo_metrics(result) -> None:
    pixel = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.1f}"
    pro = "n/a" if result.pro is None else f"{result.pro:.1f} (to FPR 0.3), {result.pro_05:.1f} (to 0.05)"
    click.echo(f"  image AUROC {result.image_auroc:.1f}  pixel AUROC {pixel}  PRO {pro}")

