"""A served model kept current and watched: hot reload of new versions, drift of recent scores, Prometheus metrics."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from patchcore.core.detector import Detector
from patchcore.errors import ModelFileError, PatchCoreError
from patchcore.io.files import atomic_write_bytes
from patchcore.io.persistence import FEEDBACK, feedback_files, read_manifest
from patchcore.methods import load_model
from patchcore.monitoring import DriftReport, model_drift

log = logging.getLogger("patchcore.serve")

# Scores remembered per model for the drift statistic: the last this many images.
RECENT_SCORES = 500


@dataclass
class ServedModel:
    """A model served by name: its lock makes requests take turns on it (and a reload wait for them)."""

    name: str
    model: Detector
    directory: Path | None = None  # where new versions appear; None: never reloaded
    device: str | None = None
    runtime: str | None = None  # `serve --runtime`: kept across reloads; None: as saved
    lock: threading.Lock = field(default_factory=threading.Lock)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_SCORES))
    refused_version: int | None = None
    false_alarm_rate: float | None = None  # `serve --false-alarm-rate`: kept across reloads; None: the model's own

    @property
    def rate(self) -> float:
        """The false-alarm rate decisions are made at: the one the service was given, else the model's own."""
        return self.model.false_alarm_rate if self.false_alarm_rate is None else self.false_alarm_rate

    @property
    def version(self) -> int:
        return int(self.model.manifest_.get("version", 1))

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest of the version served, with file paths reduced to file names: the server's
        folders are nobody's business."""
        return without_paths(self.model.manifest_)

    def drift(self) -> DriftReport:
        return model_drift(self.model, np.array(self.recent))

    def reload_if_changed(self) -> bool:
        """Load a new version of the model directory and swap it in between requests (in-flight ones finish
        on the old model). A version that fails to load is refused, logged, and not tried again; the old
        model keeps serving. Returns whether the model changed."""
        if self.directory is None:
            return False
        try:
            on_disk = int(read_manifest(self.directory).get("version", 1))
        except (ModelFileError, ValueError):
            return False  # mid-replacement or gone for a moment: the next look will tell
        if on_disk in (self.version, self.refused_version):
            return False
        try:
            new = load_model(self.directory, device=self.device, runtime=self.runtime)
        except PatchCoreError as error:
            self.refused_version = on_disk
            log.error("model %s: version %s refused, still serving version %s: %s", self.name, on_disk,
                      self.version, error)
            return False
        with self.lock:
            old, self.model = self.version, new
            self.recent.clear()  # drift is judged against the new model's nominal scores
        log.warning("model %s: now serving version %s (was %s)", self.name, self.version, old)
        return True

    def store_feedback(self, data: bytes, filename: str) -> tuple[str, bool]:
        """Keep an image an operator marked as good in the model's feedback folder (never in the model
        itself: `patchcore update --from-feedback` applies them), once per content. Returns the stored name and
        whether it is new (False: the same image was already waiting)."""
        if self.directory is None:
            raise ModelFileError(f"model {self.name!r} was not loaded from a directory: no feedback folder")
        digest = hashlib.sha256(data).hexdigest()[:12]
        waiting = [file for file in feedback_files(self.directory) if file.stem.endswith(f"-{digest}")]
        if waiting:
            return waiting[0].name, False
        suffix = Path(filename).suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", Path(filename).suffix) else ""
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest}{suffix}"
        atomic_write_bytes(self.directory / FEEDBACK / name, data)
        return name, True

    def feedback(self) -> list[dict[str, Any]]:
        files = [] if self.directory is None else feedback_files(self.directory)
        return [{"name": file.name, "bytes": file.stat().st_size} for file in files]


def without_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute file path reduced to its file name: clients see no server paths."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and re.match(r"^(/|~|[A-Za-z]:[\\/]|\\\\)", value):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    return value


class VersionWatcher:
    """Looks at every served model's directory each `interval` seconds and reloads new versions."""

    def __init__(self, models: dict[str, ServedModel], interval: float) -> None:
        self.models, self.interval = models, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patchcore-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for served in self.models.values():
                served.reload_if_changed()


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process never mix)."""

    ROUTES = ("/predict", "/feedback", "/health", "/models", "/model", "/metrics", "/")

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("patchcore_requests", "HTTP requests by route and status.", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("patchcore_request_seconds", "Time to answer a request.", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.decisions = Counter("patchcore_decisions", "Decisions by model.", ["model", "decision"],
                                 registry=self.registry)
        self.scores = Histogram("patchcore_normalised_score", "Normalised scores by model (0.5 at the threshold).",
                                ["model"], registry=self.registry, buckets=tuple(np.round(np.arange(0.1, 1.01, 0.1), 1)))
        self.registry.register(_DriftCollector(models))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in self.ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_prediction(self, model: str, decision: str | None, normalised_score: float | None) -> None:
        self.decisions.labels(model, decision or "none").inc()
        if normalised_score is not None:
            self.scores.labels(model).observe(normalised_score)


class _DriftCollector:
    """Per-model gauges computed when scraped: version served, recent images, drift statistics."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.models = models

    def collect(self):
        gauges = {
            "version": GaugeMetricFamily("patchcore_model_version", "Version of the model served.", labels=["model"]),
            "recent": GaugeMetricFamily("patchcore_drift_recent_images", "Recent scores the drift is judged on.",
                                        labels=["model"]),
            "share": GaugeMetricFamily("patchcore_drift_share_above_threshold",
                                       "Share of recent images above the threshold.", labels=["model"]),
            "psi": GaugeMetricFamily("patchcore_drift_psi", "Population stability index, recent vs nominal scores.",
                                     labels=["model"]),
            "warning": GaugeMetricFamily("patchcore_drift_warning", "1 when the recent scores have drifted.",
                                         labels=["model"]),
        }
        for name, served in self.models.items():
            report = served.drift()
            gauges["version"].add_metric([name], served.version)
            gauges["recent"].add_metric([name], report.n_recent)
            if report.share_above_threshold is not None:
                gauges["share"].add_metric([name], report.share_above_threshold)
            if report.psi is not None:
                gauges["psi"].add_metric([name], report.psi)
            gauges["warning"].add_metric([name], float(report.warning))
        yield from gauges.values()
