"""The service as its own process under concurrent valid and malformed requests; slow clients time out."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("uvicorn")

from tests.helpers import REPO_ROOT, serving  # noqa: E402
from patchcore.apps.service import create_app, load_models  # noqa: E402

LOAD_TEST = REPO_ROOT / "benchmarks" / "load_test.py"


@pytest.mark.slow
def test_bounded_load_gives_no_5xx_and_only_right_answers(fitted_model, good_test_crops, defect_crop,
                                                         tmp_path: Path) -> None:
    model_dir = fitted_model.save(tmp_path / "model")
    images = []
    for i, crop in enumerate([defect_crop[0], *good_test_crops[:3]]):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(crop).save(images[-1])
    run = subprocess.run([sys.executable, str(LOAD_TEST), str(model_dir), *map(str, images),
                          "--requests", "150", "--concurrency", "8"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert summary["server_errors_5xx"] == 0 and summary["wrong_answers"] == 0
    assert {"200", "404", "413", "422"} <= set(summary["statuses"])
    assert sum(summary["statuses"].values()) == 150


def test_a_client_that_stops_sending_gets_408(fitted_model, tmp_path: Path) -> None:
    app = create_app(load_models([str(fitted_model.save(tmp_path / "model"))]), body_timeout=1.0)
    with serving(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
            client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: 1000\r\n\r\n--b\r\n")  # then nothing more
            started = time.monotonic()
            reply = client.recv(4096).decode()
            waited = time.monotonic() - started
            while not reply.endswith("}"):  # the body may come in a second segment
                reply += client.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and "not received within 1 s" in reply
        assert 0.5 < waited < 30  # after the timeout, never before; generous on a loaded machine
