"""Commands that build models: `fit` (one folder, an ensemble of presets, or many categories) and `update`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from patchcore.apps.cli.common import (SKIP_BAD_HELP, build, declared_command, echo_threshold, ensemble_option,
                                       factory, load_categories, main, ray_options, ray_settings, report_skipped)
from patchcore.io.persistence import DEFAULT_KEEP_VERSIONS


@declared_command(main)
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory to write (with --categories: a folder of them, one per category).")
@click.option("--categories", default=None,
              help="DATA_DIR is a root of categories: fit each ('all', 'mvtec' or a comma list) into OUT/NAME.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
@click.option("--validation", "validation_dir", default=None, type=click.Path(path_type=Path),
              help="Independent good images (a folder) whose scores set the threshold, instead of a cross-fit "
                   "(default for an MVTec AD 2 or LOCO category: its validation/good).")
@click.option("--every-image", is_flag=True,
              help="Learn every image under DATA_DIR as good, even in folders named like defects or masks and "
                   "in a dataset's test split (fit refuses those otherwise).")
@ensemble_option
@ray_options
def fit(data_dir: Path, out_dir: Path, categories: str | None, skip_bad: bool, validation_dir: Path | None,
        every_image: bool, ensemble_presets: list[str] | None, use_ray: bool, ray_address: str | None,
        ray_threads: int | None, **options) -> None:
    """Fit on the good images in DATA_DIR: a folder of good images (searched recursively), or one category of a
    dataset (MVTec AD, MVTec AD 2, VisA, LOCO, BTAD, KolektorSDD2), of which only its good training images."""
    from patchcore.apps.outputs import check_writable_folder

    check_writable_folder(out_dir)
    if ensemble_presets is not None:
        fit_ensemble(data_dir, out_dir, ensemble_presets, categories, validation_dir, use_ray or ray_address, skip_bad,
                     options)
        return
    if every_image and (categories is not None or ensemble_presets is not None):
        raise click.UsageError("--every-image goes with one folder")
    if categories is not None:
        if validation_dir is not None:
            raise click.UsageError("--validation goes with one folder; with --categories each category's own images are used")
        fit_many(data_dir, out_dir, categories, skip_bad, use_ray, ray_address, ray_threads, options)
        return
    if use_ray or ray_address:
        raise click.UsageError("--ray fits several categories in parallel: add --categories")
    files, validation = training_files(data_dir, validation_dir, every_image)  # fails before the backbone loads
    model = build(options)
    model.fit(files, validation=validation, skip_bad=skip_bad)
    report_skipped(model.skipped_images_)
    model.save(out_dir)
    click.echo(f"fitted on {model.n_train_images_} images: {fitted_state(model)}; saved to {out_dir}")
    click.echo(working_size_line(model))
    hint = preset_hint(model)
    if hint:
        click.echo(hint)
    echo_threshold(model)


def training_files(data_dir: Path, validation_dir: Path | None, every_image: bool) -> tuple[list, list | None]:
    """The images to fit on and the validation images, saying which split of a known layout they are (the
    detector takes a dataset category's validation images itself, as the message says)."""
    from patchcore.data.layouts import published_layout
    from patchcore.io.images import category_validation_images, collect_images, list_images

    validation = None if validation_dir is None else collect_images(validation_dir)
    if every_image:
        files = list_images(data_dir) if data_dir.is_dir() else collect_images(data_dir)
        click.echo(f"learning all {len(files)} images under {data_dir} as good (--every-image)")
        return files, validation
    files = collect_images(data_dir, training=True)
    layout = published_layout(data_dir) if data_dir.is_dir() else None
    if layout is not None:
        validation = validation or category_validation_images(data_dir)
        held = f"; its {len(validation)} validation images set the threshold" if validation else ""
        click.echo(f"{data_dir}: a {layout.title} category: fitting on its {len(files)} good training images{held}")
    return files, validation


def fitted_state(model) -> str:
    """The bank a PatchCore fit built and where its time went; the method's name for the others."""
    if not hasattr(model, "bank_"):
        return f"{model.method} model"
    steps = [("features", model.extraction_seconds_), ("sampling", model.sampling_seconds_),
             ("index", model.index_seconds_), ("repeat check", model.repeat_check_seconds_),
             ("cross-fit", model.cross_fit_seconds_)]
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps if seconds is not None)
    return (f"memory bank {model.memory_bank_.shape[0]} x {model.memory_bank_.shape[1]} "
            f"(from {model.n_patches_seen_} patches; {timings})")


def working_size_line(model) -> str:
    """What the network sees of the commonest training image, and the option that sets it."""
    return f"{model.preprocessor_.describe(model.training_size_)}; --image-size sets it"


# From this working size on, the default's 3 x 3 neighbourhood on the stride-8 and -16 taps spans 24-48 px: a defect
# of a few pixels is diluted, and no one setting serves both sizes (docs/results.md, "One default for every defect
# size", issue #32).
SMALL_DEFECT_HINT_SIDE = 1000


def preset_hint(model) -> str | None:
    """For large images fitted with the default neighbourhood: the preset for defects of a few pixels, and its cost."""
    if getattr(model, "patch_size", None) != 3 or model.layers is not None:
        return None
    if max(model.preprocessor_.working_size(model.training_size_)) < SMALL_DEFECT_HINT_SIDE:
        return None
    return ("tip: at this size each patch averages 24-48 px. For defects a few pixels wide, fit again with --preset "
            "small-defects; for defects of any size, --ensemble small-defects,default (twice the time). Image AUROC "
            "on 1200 x 900 modules, 8-24 px defects / cell-wide ones: default 78.3 / 90.6, small-defects 97.1 / 56.4, "
            "the ensemble 96.9 / 84.4 (docs/results.md, \"One default for every defect size\")")


def fit_ensemble(data_dir: Path, out_dir: Path, presets: list[str], categories: str | None, validation_dir: Path | None,
                 use_ray: bool, skip_bad: bool, options: dict[str, Any]) -> None:
    """`fit --ensemble`: one member per preset, the other options shared, saved as one model."""
    from patchcore.io.images import collect_images

    make_model = factory(options, presets)
    for given, flag in ((categories, "--categories"), (validation_dir, "--validation"), (use_ray or None, "--ray")):
        if given is not None:
            raise click.UsageError(f"--ensemble fits one folder (`evaluate --ensemble` does categories): drop {flag}")
    files = collect_images(data_dir, training=True)
    model = make_model().fit(files, skip_bad=skip_bad)
    report_skipped(model.skipped_images_)
    model.save(out_dir)
    click.echo(f"fitted an ensemble of {len(model.members)} models ({', '.join(presets)}) on "
               f"{model.n_train_images_} images; saved to {out_dir}")
    for preset, member in zip(presets, model.members):
        click.echo(f"{preset}: {working_size_line(member)}")
    echo_threshold(model)


def fit_many(root: Path, out_dir: Path, categories: str, skip_bad: bool, use_ray: bool, ray_address: str | None,
             ray_threads: int | None, options: dict) -> None:
    """One model per category of ROOT, serially or as Ray tasks."""
    import torch

    from patchcore.apps.jobs import fit_category

    if skip_bad:
        raise click.UsageError("--skip-bad fits one folder; with --categories fix or remove the bad files")
    loaded = load_categories(root, None if categories == "all" else categories)
    make_model = factory(options)
    threads = ray_settings(use_ray, ray_address, ray_threads, torch.get_num_threads())
    if threads is None:
        finished = (fit_category(category, make_model, out_dir) for category in loaded)
    else:
        from patchcore.apps.distributed import fit_categories

        finished = fit_categories(loaded, make_model, out_dir, threads)
    for done in finished:
        click.echo(f"{done['category']}: fitted on {done['n_train_images']} images; saved to {done['model_dir']}")


@declared_command(main, declared_names=("device",))
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--from-feedback", is_flag=True, help="Also add the images operators marked as good (MODEL_DIR/feedback).")
@click.option("--keep", type=click.IntRange(min=0), default=DEFAULT_KEEP_VERSIONS, show_default=True, help="Earlier versions kept.")
@click.option("--skip-bad", is_flag=True, help=SKIP_BAD_HELP)
def update(model_dir: Path, images: tuple[Path, ...], from_feedback: bool, keep: int, skip_bad: bool,
           device: str | None) -> None:
    """Add good IMAGES (files or folders) to the PatchCore model in MODEL_DIR without refitting: new patches
    join the bank where it does not already cover them, the threshold takes their nominal scores, and the
    model before the update is kept as a version (`patchcore versions`, `patchcore rollback`)."""
    from patchcore.core.patchcore import PatchCore
    from patchcore.io.images import collect_images
    from patchcore.io.files import file_sha256
    from patchcore.io.persistence import feedback_files
    from patchcore.methods import load_model

    files = collect_images(list(images)) if images else []
    waiting = feedback_files(model_dir) if from_feedback else []
    feedback = list({file_sha256(file): file for file in reversed(waiting)}.values())[::-1]  # once per content
    if not files and not feedback:
        raise click.UsageError("nothing to add: give IMAGES, or --from-feedback with images in the feedback folder")
    model = load_model(model_dir, device=device)
    if not isinstance(model, PatchCore):
        raise click.UsageError(f"{model_dir}: only PatchCore models update without a refit, not {model.method}")
    model.progress = True
    before = model.memory_bank_.shape[0], model.decision_threshold()
    model.partial_fit([*files, *feedback], skip_bad=skip_bad)
    report_skipped(model.skipped_images_ or [])
    if feedback:
        model.change_["from_feedback"] = [f.name for f in feedback]
    model.save(model_dir, keep_versions=keep)
    for file in waiting:  # applied (copies of one image once): the saved version lists them
        file.unlink(missing_ok=True)
    change = model.manifest_["change"]
    click.echo(f"version {model.manifest_['version']}: added {change['images_added']} images"
               f"{f' ({len(feedback)} from feedback)' if feedback else ''}, {change['images_held_out']} held out; "
               f"bank {before[0]} -> {model.memory_bank_.shape[0]} rows")
    if before[1] is not None and model.decision_threshold() is not None:
        click.echo(f"threshold {before[1].value:.4f} -> {model.decision_threshold().value:.4f}")
    echo_threshold(model)

