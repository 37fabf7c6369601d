"""Batch prediction throughput on Ray: 1 and 2 actors against the serial predict, same images.

    python benchmarks/ray_throughput.py MODEL_DIR CATEGORY_DIR --repeat 3

Scores every test image of CATEGORY_DIR (`--repeat` times over, as one list) and writes heatmaps
to a temporary folder, as `patchcore predict` does: serially in this process (all cores, its
default threads), then with Ray actors (1 thread each) for each count in `--workers`. Prints
images per second and the speed-up over one actor. Actors are started and their model loaded
before the clock starts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
import torch

from patchcore.data.categories import load_category
from patchcore.apps.distributed import predict_on_actors, start_scorers
from patchcore.apps.jobs import predict_files
from patchcore.evaluation.evaluate import machine_description
from patchcore.methods import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("category", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-heatmaps", action="store_true", help="Scores only: no PNG overlays written.")
    args = parser.parse_args()
    category = load_category(args.category.parent, args.category.name)
    files = [s.image for s in category.test_samples] * args.repeat
    names = [f"{i:06d}" for i in range(len(files))]
    print(f"Machine: {machine_description()}; {len(files)} images; Ray {ray.__version__}; "
          f"{'no heatmaps' if args.no_heatmaps else 'heatmaps written'}")
    print("\n| run | images / s | vs. 1 actor |\n|---|---|---|")

    model = load_model(args.model_dir, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        predict_files(model, files, names, None if args.no_heatmaps else Path(out))
        serial = len(files) / (time.perf_counter() - started)
    print(f"| serial, this process ({torch.get_num_threads()} threads) | {serial:.1f} | |")

    ray.init(num_cpus=max(int(w) for w in args.workers.split(",")), include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    one_actor = None
    for workers in (int(w) for w in args.workers.split(",")):
        scorers = start_scorers(args.model_dir, workers, threads=1)
        with tempfile.TemporaryDirectory() as out:
            # Warm-up: one image per actor, so every actor has started and loaded the model.
            target = None if args.no_heatmaps else Path(out)
            predict_on_actors(scorers, files[:workers], names[:workers], target, chunk_size=1)
            started = time.perf_counter()
            predict_on_actors(scorers, files, names, target, chunk_size=32)
            rate = len(files) / (time.perf_counter() - started)
        one_actor = one_actor or rate
        print(f"| Ray, {workers} actor(s), 1 thread each | {rate:.1f} | {rate / one_actor:.2f}x |")


if __name__ == "__main__":
    main()
