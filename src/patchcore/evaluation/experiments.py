"""The paper's experiments (seed Tables 3-5, Fig. 5, sections 4.4-4.5) as runnable tables on any MVTec-layout root."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from patchcore.backbones import get_backbone_spec, load_backbone, resolve_layers
from patchcore.data.categories import Category
from patchcore.core.detector import Detector
from patchcore.baselines.ensemble import Ensemble
from patchcore.evaluation.evaluate import CategoryResult, evaluate_category, evaluate_fitted, machine_description
from patchcore.core.features import FeatureExtractor
from patchcore.evaluation.metrics import image_auroc
from patchcore.methods import METHODS
from patchcore.core.patchcore import PatchCore
from patchcore.io.files import atomic_write_bytes

ModelFactory = Callable[[], Detector | Ensemble]


def paper_protocol(crop: int = 224) -> dict[str, Any]:
    """The paper's preprocessing as parameters: squash to crop x 256 / 224 square, keep the central crop."""
    side = round(crop * 256 / 224)
    return {"image_size": (side, side), "center_crop": crop}


@dataclass
class Table:
    """One experiment's result: a title, column names, rows, and notes on how to read it."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(column)) for column in self.columns) + " |")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 and value != 0 else f"{value:.1f}"
    return str(value)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _summary_row(label: dict[str, Any], results: Sequence[CategoryResult]) -> dict[str, Any]:
    """Per-category image AUROC, then means of image AUROC, pixel AUROC, PRO, fit time, time per image."""
    row = dict(label)
    row.update({r.category: r.image_auroc for r in results})
    row.update(
        {
            "image AUROC": _mean([r.image_auroc for r in results]),
            "pixel AUROC": _mean([r.pixel_auroc for r in results]),
            "PRO": _mean([r.pro for r in results]),
            "fit s": _mean([r.fit_seconds for r in results]),
            "s / image": _mean([r.seconds_per_image for r in results]),
        }
    )
    return row


def _grid(
    title: str,
    categories: Sequence[Category],
    settings: Sequence[tuple[dict[str, Any], ModelFactory]],
    log: Callable[[str], None],
) -> Table:
    names = [c.name for c in categories]
    label_columns = list(settings[0][0])
    table = Table(title, label_columns + names + ["image AUROC", "pixel AUROC", "PRO", "fit s", "s / image"])
    for label, make_model in settings:
        results = [evaluate_category(category, make_model) for category in categories]
        table.rows.append(_summary_row(label, results))
        log(json.dumps(table.rows[-1], default=str))
    return table


# -- the experiments ------------------------------------------------------------------------


def subsamplers(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Seed Fig. 5: greedy coreset vs. random vs. learned proxies at 1-50 %, and the full bank."""
    settings = [({"sampler": "none (full bank)", "ratio": "100%"},
                 partial(PatchCore, **base, sampler="none", seed=seed))]
    for ratio in (0.01, 0.1, 0.25, 0.5):
        for sampler in ("greedy_coreset", "random", "learned_proxies"):
            make = partial(PatchCore, **base, sampler=sampler, coreset_ratio=ratio, seed=seed)
            settings.append(({"sampler": sampler, "ratio": f"{ratio:.0%}"}, make))
    return _grid("Subsamplers", categories, settings, log)


def bank_usage(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Share of memory-bank entries that are the nearest neighbour of at least one test patch."""
    table = Table("Memory-bank usage", ["bank", *[c.name for c in categories], "mean"])
    for label, params in (("100 %", {"sampler": "none"}), ("10 % coreset", {"coreset_ratio": 0.1}),
                          ("1 % coreset", {"coreset_ratio": 0.01})):
        row: dict[str, Any] = {"bank": label}
        for category in categories:
            model = PatchCore(**base, seed=seed, **params).fit(list(category.train_images))
            features = model.patch_features([s.image for s in category.test_samples])
            _, nearest = model.index_.search(features.reshape(-1, features.shape[-1]), k=1)
            row[category.name] = 100.0 * len(np.unique(nearest)) / len(model.memory_bank_)
        row["mean"] = _mean([row[c.name] for c in categories])
        table.rows.append(row)
        log(json.dumps(row))
    return table


def patch_size_and_levels(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Seed 4.4.1: neighbourhood size p, then which hierarchy levels are tapped (at p = 3).

    Taps including level 1 put the bank on the stride-4 grid (4x the patches); to keep the run
    short, the six level settings use a 1 % coreset, comparable among themselves.
    """
    settings = [({"setting": f"p = {p}"}, partial(PatchCore, **base, patch_size=p, seed=seed))
                for p in (1, 3, 5, 7, 9)]
    default_dim = get_backbone_spec(base["backbone"]).default_feature_dim
    for levels in ((1,), (2,), (3,), (1, 2), (2, 3), (1, 2, 3)):
        layers = [f"level{level}" for level in levels]
        make = partial(_levels_model, **base, layers=layers, feature_dim=default_dim, seed=seed)
        settings.append(({"setting": "levels " + "+".join(map(str, levels)) + " (1 % coreset)"}, make))
    return _grid("Patch size and hierarchy levels", categories, settings, log)


def _levels_model(layers: list[str], feature_dim: int | str, seed: int, **base: Any) -> PatchCore:
    """PatchCore on `layers` with the default merge: raw, or the default dimension (all channels where
    the taps have fewer)."""
    if feature_dim != "raw":
        loaded = load_backbone(base["backbone"], base["weights"])
        probe = FeatureExtractor(loaded, resolve_layers(loaded.spec, layers), 1, None)
        feature_dim = min(feature_dim, probe.feature_dim)
    return PatchCore(**base, layers=layers, feature_dim=feature_dim, coreset_ratio=0.01, seed=seed)


def stride(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Eq. 3: stride s on the patch grid (fewer, coarser patches in bank and test)."""
    settings = [({"stride": s}, partial(PatchCore, **base, patch_stride=s, seed=seed)) for s in (1, 2, 3)]
    return _grid("Patch stride", categories, settings, log)


def reweighting(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Eq. 7 on and off, b in {1, 3, 9}. Maps do not depend on Eq. 7, so one fit per category serves all."""
    variants = (("off", False, 9), ("b = 1", True, 1), ("b = 3", True, 3), ("b = 9", True, 9))
    table = Table("Eq. 7 reweighting (image AUROC)", ["Eq. 7", *[c.name for c in categories], "mean"])
    rows = {label: {"Eq. 7": label} for label, _, _ in variants}
    for category in categories:
        model = PatchCore(**base, seed=seed).fit(list(category.train_images))
        labels = np.array([int(s.is_anomalous) for s in category.test_samples])
        images = [s.image for s in category.test_samples]
        for label, reweight, neighbours in variants:
            model.reweight, model.num_neighbours = reweight, neighbours
            rows[label][category.name] = image_auroc(labels, model.score_samples(images))
    for row in rows.values():
        row["mean"] = _mean([row[c.name] for c in categories])
        table.rows.append(row)
        log(json.dumps(row))
    return table


def search_index(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Seed Table 5: exact vs. approximate (IVF, IVF-PQ) nearest-neighbour search on the full (100 %) bank."""
    settings = [({"search": index}, partial(PatchCore, **base, sampler="none", index=index, seed=seed))
                for index in ("exact", "ivf", "ivfpq")]
    return _grid("Exact vs. IVF and IVF-PQ search, 100 % bank", categories, settings, log)


def baselines(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """PatchCore against SPADE and PaDiM on the same backbone."""
    settings = [({"method": name}, partial(cls, **base, seed=seed)) for name, cls in METHODS.items()]
    return _grid("PatchCore, SPADE, PaDiM", categories, settings, log)


LOW_SHOT_SIZES = (1, 2, 5, 10, 20, 50)


def low_shot(
    categories: Sequence[Category],
    seed: int,
    log: Callable[[str], None],
    base: dict[str, Any],
    seeds: int = 3,
    **_: Any,
) -> Table:
    """Seed 4.5: 1-50 training images drawn at random (`seeds` draws), every method, mean and spread.

    No images are held out here: with one to fifty images every one goes into the model.
    """
    columns = ["method", *[_shots(n) for n in LOW_SHOT_SIZES]]
    table = Table("Low-shot image AUROC (mean ± std over draws, averaged over categories)", columns)
    pixel_table_rows = []
    for name, cls in METHODS.items():
        row: dict[str, Any] = {"method": name}
        pixel_row: dict[str, Any] = {"method": name + " (pixel AUROC)"}
        for n_images in LOW_SHOT_SIZES:
            image_scores, pixel_scores = [], []
            for draw in range(seeds):
                results = []
                for category in categories:
                    rng = np.random.default_rng(seed + draw)
                    chosen = rng.choice(len(category.train_images), size=min(n_images, len(category.train_images)),
                                        replace=False)
                    subset = dataclasses.replace(
                        category, train_images=tuple(category.train_images[i] for i in sorted(chosen))
                    )
                    make = partial(cls, **base, seed=seed + draw, holdout_fraction=0.0)
                    results.append(evaluate_category(subset, make))
                image_scores.append(_mean([r.image_auroc for r in results]))
                pixel_scores.append(_mean([r.pixel_auroc for r in results]))
            row[_shots(n_images)] = f"{np.mean(image_scores):.1f} ± {np.std(image_scores):.1f}"
            if pixel_scores[0] is not None:
                pixel_row[_shots(n_images)] = f"{np.mean(pixel_scores):.1f} ± {np.std(pixel_scores):.1f}"
            log(json.dumps({"method": name, "n_images": n_images, "image": image_scores, "pixel": pixel_scores}))
        table.rows.append(row)
        pixel_table_rows.append(pixel_row)
    table.rows.extend(row for row in pixel_table_rows if len(row) > 1)
    return table


def _shots(n_images: int) -> str:
    return f"{n_images} image" + ("s" if n_images > 1 else "")


ENSEMBLE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def ensembles(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Seed Table 4: single backbones and their ensemble at 224 / 280 / 320 px (the Lite backbones,
    whatever `base` names).

    The ensemble averages the members' scores after z-scoring each with its own held-out good
    images; it is built from the same fitted members as the single-backbone rows, so its fit time
    is their sum.
    """
    names = [c.name for c in categories]
    table = Table("Backbone ensembles and image size", ["model", "size", *names, "image AUROC", "pixel AUROC", "PRO",
                                                        "fit s", "s / image"])
    for image_size in (224, 280, 320):
        results: dict[str, list[CategoryResult]] = {}
        for category in categories:
            members, seconds = [], []
            for name in ENSEMBLE_BACKBONES:
                started = time.perf_counter()
                member = PatchCore(backbone=name, seed=seed, **paper_protocol(image_size)).fit(list(category.train_images))
                seconds.append(time.perf_counter() - started)
                members.append(member)
                results.setdefault(name.replace("efficientnet_", ""), []).append(
                    evaluate_fitted(category, member, seconds[-1]))
            ensemble = Ensemble.from_fitted(members)
            results.setdefault("ensemble lite0+1+2", []).append(evaluate_fitted(category, ensemble, sum(seconds)))
        for label, category_results in results.items():
            table.rows.append(_summary_row({"model": label, "size": image_size}, category_results))
            log(json.dumps(table.rows[-1], default=str))
    return table


def timing(
    categories: Sequence[Category], seed: int, log: Callable[[str], None], base: dict[str, Any], **_: Any
) -> Table:
    """Seed Table 5: time per image of each variant, measured in one run on the first category.

    Time per image is predict (score + map) over the category's test images, batch 8, after a
    warm-up batch; fit time includes feature extraction and subsampling.
    """
    category = categories[0]
    variants: tuple[tuple[str, ModelFactory], ...] = (
        ("PatchCore-100 %", partial(PatchCore, **base, sampler="none", seed=seed)),
        ("PatchCore-10 %", partial(PatchCore, **base, coreset_ratio=0.1, seed=seed)),
        ("PatchCore-1 %", partial(PatchCore, **base, coreset_ratio=0.01, seed=seed)),
        ("PatchCore-100 % + IVF-PQ", partial(PatchCore, **base, sampler="none", index="ivfpq", seed=seed)),
        ("SPADE", partial(METHODS["spade"], **base, seed=seed)),
        ("PaDiM", partial(METHODS["padim"], **base, seed=seed)),
    )
    table = Table(f"Time per image on {category.name}", ["variant", "image AUROC", "fit s", "s / image"])
    images = [s.image for s in category.test_samples]
    labels = np.array([int(s.is_anomalous) for s in category.test_samples])
    for label, make in variants:
        started = time.perf_counter()
        model = make().fit(list(category.train_images))
        fit_seconds = time.perf_counter() - started
        model.predict(images[: model.batch_size])  # warm-up: first calls allocate
        started = time.perf_counter()
        scores = [p.score for p in model.iter_predict(images)]
        per_image = (time.perf_counter() - started) / len(images)
        row = {"variant": label, "image AUROC": image_auroc(labels, np.array(scores)), "fit s": fit_seconds,
               "s / image": per_image}
        table.rows.append(row)
        log(json.dumps(row))
    return table


EXPERIMENTS: dict[str, Callable[..., Table]] = {
    "subsamplers": subsamplers,
    "bank-usage": bank_usage,
    "patch-size-levels": patch_size_and_levels,
    "stride": stride,
    "reweighting": reweighting,
    "search-index": search_index,
    "baselines": baselines,
    "low-shot": low_shot,
    "ensembles": ensembles,
    "timing": timing,
}


def run_experiment(
    name: str,
    categories: Sequence[Category],
    out_dir: Path,
    command: str,
    seed: int = 0,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    seeds: int = 3,
    log: Callable[[str], None] = print,
) -> Table:
    """Run experiment `name` and write `out_dir/NAME.md` and `NAME.json` with command, date and machine."""
    try:
        experiment = EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}") from None
    started = time.perf_counter()
    # The paper's tables were made with its MVTec protocol, so the experiments reproduce them with it.
    base = {"backbone": backbone, "weights": weights, **paper_protocol()}
    table = experiment(categories, seed=seed, log=log, base=base, seeds=seeds)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (
        f"### {table.title}\n\nCommand: `{command}`\n\nDate: {when}. Machine: {machine_description()}. "
        f"Backbone {backbone}, the paper's protocol (256 x 256 squash, 224 centre crop; PatchCore defaults "
        f"otherwise: 10 % greedy coreset, p = 3, Eq. 7 with b = 9), "
        f"seed {seed}, categories {', '.join(c.name for c in categories)}. "
        f"Run time {time.perf_counter() - started:.0f} s.\n\n"
    )
    text = header + table.markdown() + "\n" + "".join(f"\n{note}\n" for note in table.notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / f"{name}.md", text.encode())
    document = {"experiment": name, "command": command, "date": when, "machine": machine_description(),
                "backbone": backbone, "weights": weights, "seed": seed, "columns": table.columns, "rows": table.rows}
    atomic_write_bytes(out_dir / f"{name}.json", json.dumps(document, indent=2, default=str).encode())
    return table
