"""Load test of `patchcore serve` on loopback: valid and malformed uploads, concurrently, answers checked.

    python benchmarks/load_test.py MODEL_DIR IMAGE [IMAGE ...] --requests 2000 --concurrency 16

Starts `patchcore serve MODEL_DIR` as its own process on a free port, then sends `--requests`
requests from `--concurrency` threads: a mix of valid images (each score compared with the
library's score for the same file, to the bit), and malformed uploads (random bytes, empty files,
truncated PNGs, bodies over the size limit, unknown model names), each of which must get its 4xx.
Samples the server's resident memory while it runs. Prints a JSON summary; exits non-zero on any
5xx, any wrong answer or any unexpected status.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

from patchcore.methods import load_model

MAX_UPLOAD_MB = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests_plan(images: list[Path], n_requests: int, seed: int) -> list[dict]:
    """Each request: what to send and the status it must get (60 % valid, the rest malformed)."""
    rng = random.Random(seed)
    valid = [{"kind": "valid", "file": str(p), "body": p.read_bytes(), "status": 200} for p in images]
    png = images[0].read_bytes()
    malformed = [
        {"kind": "random bytes", "body": rng.randbytes(2048), "status": 422},
        {"kind": "empty file", "body": b"", "status": 422},
        {"kind": "truncated png", "body": png[: len(png) // 2], "status": 422},
        {"kind": "over the size limit", "body": b"\0" * int(MAX_UPLOAD_MB * 1024 * 1024 + 1), "status": 413},
        {"kind": "unknown model", "body": png, "status": 404, "model": "no-such-model"},
    ]
    return [rng.choice(valid) if rng.random() < 0.6 else rng.choice(malformed) for _ in range(n_requests)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_model(args.model_dir, device="cpu")
    expected = {str(p): model.predict([p])[0].score for p in args.images}  # one at a time, as the service scores
    plan = requests_plan(args.images, args.requests, args.seed)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "patchcore", "serve", f"m={args.model_dir}", "--port", str(port),
         "--max-upload-mb", str(MAX_UPLOAD_MB), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        memory = [resident_mb(server.pid)]
        sampling = True

        def sample() -> None:
            while sampling:
                memory.append(resident_mb(server.pid))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client = httpx.Client(timeout=60)
        outcomes: Counter = Counter()
        problems: list[str] = []
        latencies: list[float] = []
        lock = threading.Lock()

        def send(request: dict) -> None:
            started = time.perf_counter()
            url = f"{base}/predict?model={request.get('model', 'm')}&overlay=false"
            try:
                response = client.post(url, files={"image": ("upload.png", request["body"], "image/png")})
            except httpx.HTTPError as error:
                with lock:
                    outcomes["transport error"] += 1
                    problems.append(f"{request['kind']}: {error!r}")
                return
            elapsed = time.perf_counter() - started
            wrong = None
            if response.status_code != request["status"]:
                wrong = f"{request['kind']}: status {response.status_code}, expected {request['status']}"
            elif "application/json" not in response.headers.get("content-type", ""):
                wrong = f"{request['kind']}: not JSON"
            elif request["kind"] == "valid" and response.json()["score"] != expected[request["file"]]:
                wrong = f"valid: score {response.json()['score']} != library {expected[request['file']]}"
            with lock:
                outcomes[f"{response.status_code}"] += 1
                latencies.append(elapsed)
                if wrong:
                    problems.append(wrong)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(send, plan))
        wall = time.perf_counter() - started
        sampling = False
        sampler.join()
        memory.append(resident_mb(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)

    latencies.sort()
    summary = {
        "requests": len(plan),
        "concurrency": args.concurrency,
        "valid": sum(r["kind"] == "valid" for r in plan),
        "statuses": dict(sorted(outcomes.items())),
        "server_errors_5xx": sum(n for status, n in outcomes.items() if status.startswith("5")),
        "wrong_answers": len(problems),
        "first_problems": problems[:5],
        "wall_s": round(wall, 1),
        "requests_per_s": round(len(plan) / wall, 1),
        "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "latency_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "server_rss_mb_start": round(memory[0]),
        "server_rss_mb_first_quarter": round(max(memory[: max(1, len(memory) // 4)])),
        "server_rss_mb_peak": round(max(memory)),
        "server_rss_mb_end": round(memory[-1]),
    }
    print(json.dumps(summary, indent=2))
    if summary["server_errors_5xx"] or problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
