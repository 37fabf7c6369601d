"""Where predict's time goes on a GPU, in one run: the network alone (eager and replayed as a CUDA graph),
predict per image with and without graphs, torch and host profiles, PNG files per second against decoding
alone, the coreset on the device against the CPU's picks, and that graphs change no score.

    python benchmarks/gpu_breakdown.py          # brick from data/offline; writes into $OUT (default /tmp/gpu-out)

On a machine without CUDA it runs the same sections small, as a dry run of the script.
"""

import cProfile
import io
import json
import os
import pstats
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from patchcore import PatchCore
from patchcore.core.replay import GraphReplay
from patchcore.core.sampling import greedy_coreset
from patchcore.data.categories import load_category
from patchcore.io.images import load_image

OUT = Path(os.environ.get("OUT", "/tmp/gpu-out"))
OUT.mkdir(parents=True, exist_ok=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUICK = DEVICE == "cpu"  # a dry run of the script here
results: dict = {}


def save() -> None:
    (OUT / "profile.json").write_text(json.dumps(results, indent=2, default=str))


def section(name):
    def wrap(function):
        started = time.perf_counter()
        try:
            results[name] = function()
        except Exception:  # noqa: BLE001
            results[name] = {"failed": traceback.format_exc()[-1500:]}
        print(f"== {name} ({time.perf_counter() - started:.1f} s): {json.dumps(results[name], default=str)[:1500]}",
              flush=True)
        save()
        return function
    return wrap


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(function, repeats: int = 1) -> float:
    """Seconds per call."""
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    sync()
    return (time.perf_counter() - started) / repeats


category = load_category(Path("data/offline"), "brick")
train = list(category.train_images)
tests = [load_image(s.image) for s in category.test_samples]
pictures = [tests[i % len(tests)] for i in range(64 if QUICK else 256)]
model = PatchCore(device=DEVICE, image_size=224, coreset_ratio=0.1, holdout_fraction=0.1)
fit_seconds = timed(lambda: model.fit(train[:40] if QUICK else train))
results["fit"] = {"s": round(fit_seconds, 2), "coreset s": round(model.sampling_seconds_, 3),
                  "bank": model.memory_bank_.shape, "device": str(model.device_),
                  "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None, "torch": torch.__version__}
print(results["fit"], flush=True)
batch64 = torch.stack([model.preprocessor_(p) for p in pictures[:64]]).to(DEVICE).contiguous(
    memory_format=torch.channels_last)
batch1 = batch64[:1].clone(memory_format=torch.channels_last)


@section("network alone, ms per batch")
def network_alone():
    out = {}
    eager = model.extractor_
    graphed = GraphReplay(eager)
    for name, batch, repeats in (("b1", batch1, 5 if QUICK else 200), ("b64", batch64, 2 if QUICK else 20)):
        for label, function in (("eager", eager), ("graph", graphed)):
            for _ in range(4):
                function(batch)
            out[f"{name} {label}"] = round(1000 * timed(lambda: function(batch), repeats), 3)
    return out


def per_image_ms(batch: int, graphs: bool, n: int | None = None) -> float:
    model._network = GraphReplay(model.extractor_) if graphs else model.extractor_
    model.batch_size = batch
    chosen = pictures[: n or len(pictures)]
    if batch == 1:
        for p in chosen[:4]:
            model.predict([p])
        return 1000 * timed(lambda: [model.predict([p]) for p in chosen]) / len(chosen)
    for _ in range(3):
        model.predict(chosen[:batch])
    return 1000 * timed(lambda: model.predict(chosen)) / len(chosen)


@section("predict ms/image (10 % bank, decoded pictures)")
def predict_times():
    out = {}
    for graphs in (True, False):
        for batch in (1, 16, 64):
            out[f"b{batch} graphs={graphs}"] = round(per_image_ms(batch, graphs), 3)
    model._network = GraphReplay(model.extractor_)
    model.batch_size = 64
    out["b64 score_samples (no maps)"] = round(1000 * timed(lambda: model.score_samples(pictures)) / len(pictures), 3)
    return out


def profile_table(function, name: str, rows: int = 30) -> dict:
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profiler:
        function()
    averages = profiler.key_averages()
    text = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    if DEVICE == "cuda":
        text += "\n\n" + averages.table(sort_by="self_cuda_time_total", row_limit=rows)
    (OUT / f"{name}.txt").write_text(text)
    return {"written": f"{name}.txt"}


@section("torch profiles")
def torch_profiles():
    model._network = GraphReplay(model.extractor_)
    model.batch_size = 64
    model.predict(pictures[:64])
    model.batch_size = 1
    for p in pictures[:4]:
        model.predict([p])
    profile_table(lambda: [model.predict([p]) for p in pictures[:20]], "profile_b1")
    return {"written": ["profile_b1.txt"]}


@section("cProfile (host)")
def host_profiles():
    out = {}
    for batch, run in ((64, lambda: model.predict(pictures[:128])), (1, lambda: [model.predict([p]) for p in pictures[:50]])):
        model.batch_size = batch
        run()
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(30)
        (OUT / f"cprofile_b{batch}.txt").write_text(stream.getvalue())
        out[f"b{batch}"] = f"cprofile_b{batch}.txt"
    return out


@section("files per second (b64, 10 % bank)")
def files_per_second():
    folder = Path(tempfile.mkdtemp())
    files = []
    for i in range(128 if QUICK else 2048):
        files.append(folder / f"{i:05d}.png")
        tests[i % len(tests)].resize((256, 256)).save(files[-1])
    out = {}
    model._network = GraphReplay(model.extractor_)
    model.batch_size = 64
    for threads in (None, 16):
        model.loader_threads = threads
        for _ in range(3):
            model.predict(files[:64])
        out[f"predict, loader_threads={threads}"] = round(len(files) / timed(lambda: model.predict(files)), 1)
    out["score_samples, loader_threads=16"] = round(len(files) / timed(lambda: model.score_samples(files)), 1)
    model.loader_threads = None
    from concurrent.futures import ThreadPoolExecutor

    for threads in (8, 16):
        with ThreadPoolExecutor(threads) as pool:
            seconds = timed(lambda: list(pool.map(model._picture, files)))
        out[f"decode+resize only, {threads} threads"] = round(len(files) / seconds, 1)
    return out


@section("coreset")
def coreset():
    out = {}
    rows = 20_000 if QUICK else 200_000
    features = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(0))
    greedy_coreset(features[:20_000], 600, device=DEVICE)
    out[f"{rows}x1024 to 10 % on {DEVICE}, s"] = [round(timed(lambda: greedy_coreset(features, rows // 10, device=DEVICE)), 3)
                                                  for _ in range(3)]
    small = features[:50_000]
    on_device = greedy_coreset(small, 5_000, device=DEVICE)
    on_cpu = greedy_coreset(small, 5_000, device="cpu")
    out["50000x1024 to 5000: picks shared with the CPU's"] = len(set(on_device.tolist()) & set(on_cpu.tolist()))
    return out


@section("decisions agree, graphs on/off")
def agreement():
    model.batch_size = 16
    model._network = GraphReplay(model.extractor_)
    for _ in range(3):
        graphed = model.predict(pictures[:32])
    model._network = model.extractor_
    eager = model.predict(pictures[:32])
    return {"max score diff": max(abs(a.score - b.score) for a, b in zip(graphed, eager)),
            "max map diff": float(max(np.abs(a.anomaly_map - b.anomaly_map).max() for a, b in zip(graphed, eager))),
            "decisions equal": all(a.decision == b.decision for a, b in zip(graphed, eager))}


print(json.dumps(results, indent=1, default=str))
