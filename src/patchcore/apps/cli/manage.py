"""Commands on saved models: `serve` them, `export` to ONNX, list `versions`, change how they `decide`, `rollback`;
and list the `backbones`."""

from __future__ import annotations

import errno
from pathlib import Path

import click

from patchcore.apps.cli.common import declared_command, main
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS


@declared_command(main, declared_names=("device", "runtime"))
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
@click.option("--false-alarm-rate", "rates", multiple=True, metavar="RATE|NAME=RATE",
              help="Decide at this false-alarm rate instead of the model's own: RATE for every model, NAME=RATE for "
                   "one (repeat the option). /predict?false_alarm_rate= overrides it per request.")
def serve(models: tuple[str, ...], host: str, port: int, api_key: str | None, max_upload_mb: float,
          max_megapixels: float, body_timeout: float, log_level: str, reload_interval: float, rates: tuple[str, ...],
          device: str | None, runtime: str | None) -> None:
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
        loaded = load_models(list(models), device=device, rates=rates, runtime=runtime)
    except ValueError as error:
        listening.close()
        raise click.UsageError(str(error)) from error
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")  # as uvicorn's lines
    app = create_app(loaded, max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                     body_timeout=body_timeout, max_megapixels=max_megapixels, reload_interval=reload_interval)
    click.echo(f"serving {', '.join(f'{name} (false alarms {served.rate:.1%})' for name, served in loaded.items())} "
               f"on http://{host}:{port}/")
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


@declared_command(main, declared_names=("false_alarm_rate", "min_defect_area", "pixel_size"))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP_VERSIONS, show_default=True,
              help="Earlier versions kept.")
def decide(model_dir: Path, keep: int, false_alarm_rate: float | None, min_defect_area: float | None,
           pixel_size: float | None) -> None:
    """Store how the model in MODEL_DIR decides (its false-alarm rate, the size rule) as a new version, without
    refitting: `predict`, `serve` and a reloading service then decide so; `rollback` undoes it."""
    from patchcore.core.thresholds import validate_false_alarm_rate
    from patchcore.methods import load_model

    changes = {name: value for name, value in [("false_alarm_rate", false_alarm_rate),
                                                ("min_defect_area", min_defect_area), ("pixel_size", pixel_size)]
               if value is not None}
    if not changes:
        raise click.UsageError("nothing to change: give --false-alarm-rate, --min-defect-area or --pixel-size")
    model = load_model(model_dir)
    unknown = [name for name in changes if name not in model.get_params()]
    if unknown:
        raise click.UsageError(f"{model_dir}: a {model.method} model has no "
                               + ", ".join("--" + name.replace("_", "-") for name in unknown))
    before = model.decision_threshold()
    model.set_params(**changes)
    try:
        validate_false_alarm_rate(model.false_alarm_rate)
        if hasattr(model, "_check_params"):  # a Detector's other parameters (an Ensemble has only the rate)
            model._check_params()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    model.change_ = {"action": "decide", **changes}
    model.save(model_dir, keep_versions=keep)
    after = model.decision_threshold()
    what = ", ".join(f"{name} {value}" for name, value in changes.items())
    moved = "" if before is None or after is None else f"; threshold {before.value:.4f} -> {after.value:.4f}"
    click.echo(f"version {model.manifest_['version']} of {model_dir}: {what}{moved}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("version", type=int)
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP_VERSIONS, show_default=True, help="Earlier versions kept.")
def rollback(model_dir: Path, version: int, keep: int) -> None:
    """Make kept VERSION the current model of MODEL_DIR again (verified first; the replaced one is kept)."""
    from patchcore.io.persistence import rollback as roll_back

    new = roll_back(model_dir, version, keep_versions=keep)
    click.echo(f"version {new} of {model_dir} is version {version}'s model")


@main.command()
def backbones() -> None:
    """List the backbones, their default taps and where their weights come from."""
    from patchcore.backbones import BACKBONES, DEFAULT_BACKBONE

    for name, spec in sorted(BACKBONES.items()):
        marker = "*" if name == DEFAULT_BACKBONE else " "
        click.echo(f"{marker} {name:20s} taps {','.join(spec.default_layers):20s} dim {spec.default_feature_dim!s:>5}  {spec.description}")

