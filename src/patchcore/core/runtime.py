"""Where the feature network runs on a CPU: eager torch, or ONNX Runtime on the same network exported per input shape
and kept in an on-disk cache."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchcore.core.features import FeatureExtractor

RUNTIMES = ("torch", "onnxruntime")
# The folder exported networks are kept in; default: $XDG_CACHE_HOME/patchcore/onnx (~/.cache/patchcore/onnx).
CACHE_ENV = "PATCHCORE_CACHE"
OPSET = 17


def runtime_problem(runtime: str, device: torch.device, precision: str) -> str | None:
    """Why `runtime` cannot run this model's network (None: it can)."""
    if runtime == "onnxruntime":
        if device.type != "cpu":
            return f"runtime 'onnxruntime' runs the network on the CPU; on {device.type} use runtime 'torch'"
        if precision != "float32":
            return f"runtime 'onnxruntime' computes in float32; precision {precision!r} needs runtime 'torch'"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "runtime 'onnxruntime' needs the onnxruntime package: pip install 'patchcore[export]'"
    return None


def cache_folder() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "patchcore" / "onnx"


class _Traceable(nn.Module):
    """The module torch.onnx.export traces: the extractor's `traceable` forward."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.traceable(images)


class OnnxRuntimeNetwork:
    """The extractor's forward under ONNX Runtime: (B, 3, H, W) images -> (B, h, w, D) float32 features, equal to
    torch's within float32 rounding (tested), 1.4-2x (224 px) to 3.7-5x (1 MP) faster for Lite0 on a 2-core CPU
    (docs/results.md, "The network under ONNX Runtime").

    Each input shape (batch size included) is exported once: tracing fixes that shape's padding arithmetic, and the
    onnxscript optimiser folds it into the convolutions (with a free batch axis it could not, and the network ran
    1.2-1.6x slower). The file is kept in `cache_folder()` under a hash of the network's weights, settings and the
    shape, so a later process loads it in milliseconds instead of exporting again (1-2 s). Where the cache cannot be
    written, the export stays in memory.
    """

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self._sessions: dict[tuple[int, ...], object] = {}
        self._fingerprint: str | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(side) for side in images.shape)
        session = self._sessions.get(shape) or self._open(shape)
        (features,) = session.run(None, {"images": np.ascontiguousarray(images.float().cpu().numpy())})
        return torch.from_numpy(features)

    def _open(self, shape: tuple[int, ...]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Spinning threads kept the cores busy after each run, slowing the search and maps that follow in torch.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = cache_folder() / f"{self._key(shape)}.onnx"
        session = None
        if path.is_file():
            try:
                session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception:  # a damaged or foreign file: export again over it
                session = None
        if session is None:
            graph = self._export(shape)
            _write_quietly(path, graph)
            session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._sessions[shape] = session
        return session

    def _key(self, shape: tuple[int, ...]) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256()
            extractor = self.extractor
            settings = (torch.__version__, OPSET, extractor.step_names, extractor.layers, extractor.patch_size,
                        extractor.stride, extractor.feature_dim, extractor.unit_length)
            digest.update(repr(settings).encode())
            for name, tensor in extractor.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return f"{self._fingerprint}-{'x'.join(map(str, shape))}"

    def _export(self, shape: tuple[int, ...]) -> bytes:
        module = _Traceable(self.extractor).eval()
        example = torch.zeros(shape, device=next(self.extractor.parameters()).device)
        buffer = io.BytesIO()
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation notes about fixed sizes: intended here
                torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["images"],
                                  output_names=["features"], opset_version=OPSET)
        finally:
            exporter_log.setLevel(level)
        graph = buffer.getvalue()
        try:
            import onnx
            import onnxscript

            graph = onnxscript.optimizer.optimize(onnx.load_from_string(graph)).SerializeToString()
        except ImportError:
            pass
        return graph


def _write_quietly(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole (a temporary file renamed), or not at all where the folder is not writable."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as handle:
            partial = handle.name
            handle.write(data)
        os.replace(partial, path)
    except OSError:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
