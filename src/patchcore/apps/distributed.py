"""Ray: categories fitted and evaluated as parallel tasks, batch prediction in actors that load a model once.

Optional (`pip install 'patchcore[ray]'`); nothing else in the package imports this module. Every
path handed to a task (data, model directories, outputs) must be readable and writable from the
Ray nodes at the same location, as on one machine or a shared filesystem. Each task or actor
reserves one Ray CPU and runs `threads` threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from patchcore.apps.jobs import fit_category, predict_files, with_size_rule
from patchcore.core.detector import Detector
from patchcore.data.categories import Category
from patchcore.evaluation.evaluate import CategoryResult, evaluate_category
from patchcore.io.visualize import DEFAULT_HEATMAP_SIDE
from patchcore.methods import load_model
from patchcore.progress import progress_bar


def _ray():
    try:
        import ray
    except ImportError as error:
        raise RuntimeError("--ray needs Ray: pip install 'patchcore[ray]'") from error
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local one (with `num_cpus`) when None."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 configure_logging=False, log_to_driver=False)


def _set_threads(threads: int) -> None:
    """Ray gives each worker OMP_NUM_THREADS = its CPUs; the same thread count as the serial run keeps
    every floating-point sum in the same order, so results are bit-identical to it."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    threadpool_limits(limits=threads)  # numpy's BLAS, which the coreset selection uses


def _fit_one(category: Category, make_model: Callable[[], Detector], out_dir: Path, threads: int) -> dict:
    _set_threads(threads)
    return fit_category(category, make_model, out_dir)


def _evaluate_one(category: Category, make_model: Callable[[], Detector], maps_dir: Path | None, details: bool,
                  threads: int) -> CategoryResult:
    _set_threads(threads)
    return evaluate_category(category, make_model, maps_dir, details)


def fit_categories(categories: Sequence[Category], make_model: Callable[[], Detector], out_dir: Path,
                   threads: int) -> Iterator[dict]:
    """Fit and save one model per category (`out_dir/NAME`), one Ray task each; yields as they finish."""
    task = _ray().remote(num_cpus=1)(_fit_one)
    yield from _as_completed([task.remote(c, make_model, out_dir, threads) for c in categories])


def evaluate_categories(categories: Sequence[Category], make_model: Callable[[], Detector], maps_dir: Path | None,
                        details: bool, threads: int) -> list[CategoryResult]:
    """`evaluate_category` for each category as a Ray task; results in the categories' order."""
    ray = _ray()
    task = ray.remote(num_cpus=1)(_evaluate_one)
    return ray.get([task.remote(c, make_model, maps_dir, details, threads) for c in categories])


def _as_completed(pending: list) -> Iterator:
    ray = _ray()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


class _Scorer:
    """A Ray actor's state: the model, loaded once, scoring chunks of files and writing their heatmaps."""

    def __init__(self, model_dir: str, threads: int, false_alarm_rate: float | None, size_rule: dict | None) -> None:
        _set_threads(threads)
        self.model = with_size_rule(load_model(model_dir, device="cpu"), size_rule)
        self.false_alarm_rate = false_alarm_rate

    def score(self, files: list[str], names: list[str], out_dir: str | None, skip_bad: bool,
              heatmap_side: int | None) -> tuple[list, list]:
        return predict_files(self.model, [Path(f) for f in files], names, None if out_dir is None else Path(out_dir),
                             skip_bad, heatmap_side=heatmap_side, false_alarm_rate=self.false_alarm_rate)


def start_scorers(model_dir: Path, workers: int, threads: int, false_alarm_rate: float | None = None,
                  size_rule: dict | None = None):
    """A pool of `workers` actors, each loading the model in `model_dir` once (on CPU), deciding at
    `false_alarm_rate` and by `size_rule` (`jobs.with_size_rule`)."""
    ray = _ray()
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=1)(_Scorer)  # one CPU reserved per actor, however many threads it runs
    return ActorPool([actor.remote(str(model_dir), threads, false_alarm_rate, size_rule) for _ in range(workers)])


def predict_on_actors(scorers, files: Sequence[Path], names: Sequence[str], out_dir: Path | None,
                      skip_bad: bool = False, chunk_size: int = 64,
                      heatmap_side: int | None = DEFAULT_HEATMAP_SIDE,
                      on_row: Callable[[dict], None] | None = None,
                      progress: bool = False) -> tuple[list[dict], list[str]]:
    """`jobs.predict_files` on the `start_scorers` pool, chunk by chunk: rows in the files' order (each also
    given to `on_row` as its chunk returns), skipped files."""
    starts = np.arange(0, len(files), chunk_size)
    chunks = [([str(f) for f in files[s : s + chunk_size]], list(names[s : s + chunk_size])) for s in starts]
    target = None if out_dir is None else str(out_dir)
    rows, skipped = [], []
    with progress_bar(len(files), "predict", progress) as bar:
        for (chunk_files, _), (chunk_rows, chunk_skipped) in zip(chunks, scorers.map(
                lambda scorer, chunk: scorer.score.remote(chunk[0], chunk[1], target, skip_bad, heatmap_side), chunks)):
            rows += chunk_rows
            skipped += chunk_skipped
            for row in chunk_rows if on_row is not None else ():
                on_row(row)
            bar.update(len(chunk_files))
    return rows, skipped
