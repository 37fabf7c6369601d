"""Commands that score images with a saved model: `predict` (scores, decisions, heatmaps) and `monitor` (drift)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from patchcore.apps.cli.common import SKIP_BAD_HELP, declared_command, is_inside, main, ray_options, ray_settings, report_skipped

MAX_ROWS_ECHOED = 50  # beyond this, a predict's rows are in scores.csv only, not on the terminal


@declared_command(main, declared_names=("device", "weights", "runtime", "false_alarm_rate", "min_defect_area",
                                        "pixel_size"))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Folder for scores.csv, scores.json and heatmaps/ (required unless --submission).")
@click.option("--submission", "submission_dir", default=None, type=click.Path(path_type=Path),
              help="IMAGES are MVTec AD 2 object folders: write the maps of their test_private and "
                   "test_private_mixed images here, as the evaluation server reads them.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@click.option("--heatmap-size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Heatmap overlays hold at most this many pixels squared, aspect kept (1024: about a megapixel); "
                   "0 writes them at each image's own size.")
@click.option("--no-heatmaps", is_flag=True, help="Write scores only.")
@click.option("--workers", type=int, default=2, show_default=True, help="With --ray: actors, each loading the model once.")
@ray_options
def predict(model_dir: Path, images: tuple[Path, ...], out_dir: Path | None, submission_dir: Path | None,
            device: str | None, weights: str | None, runtime: str | None,
            false_alarm_rate: float | None, min_defect_area: float | None, pixel_size: float | None, skip_bad: bool,
            heatmap_size: int, no_heatmaps: bool, workers: int, use_ray: bool, ray_address: str | None,
            ray_threads: int | None) -> None:
    """Score IMAGES (files or folders, searched recursively) with the model in MODEL_DIR; write scores,
    decisions, defect regions and heatmaps (heatmaps/NAME.png: the path below the inputs' common folder, '/' as
    '__'; regions outlined). --false-alarm-rate, --min-defect-area and --pixel-size override the model's."""
    import time

    from patchcore.apps.jobs import summary_line
    from patchcore.core.thresholds import validate_false_alarm_rate
    from patchcore.io.images import collect_images
    from patchcore.apps.outputs import ScoresWriter, check_writable_folder
    from patchcore.io.files import output_names

    if false_alarm_rate is not None:
        validate_false_alarm_rate(false_alarm_rate)
    size_rule = {"min_defect_area": min_defect_area, "pixel_size": pixel_size}
    if submission_dir is not None:
        predict_submission(model_dir, images, submission_dir, device, weights, size_rule, false_alarm_rate, runtime)
        return
    if out_dir is None:
        raise click.UsageError("--out is required (or --submission for MVTec AD 2's held-back test sets)")
    check_writable_folder(out_dir)
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
            from patchcore.apps.jobs import predict_files, with_size_rule
            from patchcore.methods import load_model

            model = with_size_rule(load_model(model_dir, device=device, weights=weights, runtime=runtime), size_rule)
            rows, skipped = predict_files(model, files, names, heatmaps_dir, skip_bad, progress=True,
                                          heatmap_side=heatmap_side, on_row=scores.add,
                                          false_alarm_rate=false_alarm_rate)
        else:
            if device not in (None, "cpu") or weights is not None or runtime is not None:
                raise click.UsageError("--device, --weights and --runtime are not used with --ray (actors load models "
                                       "on CPU as saved)")
            if workers < 1:
                raise click.UsageError(f"--workers must be >= 1, got {workers}")
            from patchcore.apps.distributed import predict_on_actors, start_scorers

            scorers = start_scorers(model_dir, workers, threads, false_alarm_rate, size_rule)
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


@declared_command(main, declared_names=("device",))
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
    shift = "n/a" if report.median_shift is None else f"{report.median_shift:+.1%}"
    click.echo(f"{report.n_recent} images: {share} above the threshold (nominal {model.false_alarm_rate:.1%}), "
               f"PSI {psi}, median score {shift} against the nominal scores")
    fired = f" (rules fired: {', '.join(report.rules_fired)})" if report.rules_fired else ""
    click.echo(("DRIFT: " if report.warning else "ok: ") + report.reason + fired)
    if report.warning:
        sys.exit(1)



def predict_submission(model_dir: Path, folders: tuple[Path, ...], submission_dir: Path, device: str | None,
                       weights: str | None, size_rule: dict, false_alarm_rate: float | None,
                       runtime: str | None = None) -> None:
    """One model's maps of its MVTec AD 2 object's held-back test sets, into a submission folder."""
    from patchcore.apps.jobs import with_size_rule
    from patchcore.apps.outputs import check_writable_folder
    from patchcore.data.mvtec_variants import is_mvtec_ad2, load_mvtec_ad2
    from patchcore.data.submission import write_submission_maps
    from patchcore.methods import load_model

    if false_alarm_rate is not None:
        raise click.UsageError("--submission thresholds maps at the model's own pixel threshold")
    check_writable_folder(submission_dir, "--submission")
    categories = []
    for folder in folders:
        if not is_mvtec_ad2(folder):
            raise click.UsageError(f"{folder}: not an MVTec AD 2 object folder (train/good and test_private)")
        categories.append(load_mvtec_ad2(folder))
    model = with_size_rule(load_model(model_dir, device=device, weights=weights, runtime=runtime), size_rule)
    for category in categories:
        written = write_submission_maps(model, category, submission_dir)
        click.echo(f"{category.name}: wrote {written} maps and thresholded maps under {submission_dir}")
