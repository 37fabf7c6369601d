"""ONNX export of a fitted PatchCore: one graph from preprocessed images to image scores and anomaly maps."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchcore.core.patchcore import PatchCore
from patchcore.core.scoring import anomaly_maps, image_scores, map_operators
from patchcore.io.persistence import usual_permissions
from patchcore.search import BankSearch, describe_index

DEFAULT_MAX_BANK_ROWS = 100_000
OPSET = 18
SEARCH_CONTRACT = (
    "The graph finds nearest neighbours exactly. Its scores equal the library's with index 'exact' within 1e-4 "
    "(tested). Against an approximate library index (ivf, the default) they can differ where that index misses "
    "a patch's true nearest neighbour: the approximate distance is then larger; see the README for the measured gap.")


class ScoringGraph(nn.Module):
    """A fitted PatchCore as one module for export: backbone and patch features, exact search of the
    memory bank, and the library's own scoring (`patchcore.core.scoring`: Eq. 7 and the blurred map).

    Built from copies: exporting never moves or changes the fitted model (a CUDA model stays on CUDA).
    """

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.extractor = copy.deepcopy(model.extractor_).cpu().to(memory_format=torch.contiguous_format)
        self.search = BankSearch(model.memory_bank_)
        self.reweight = model.reweight
        self.num_neighbours = model.num_neighbours
        width, height = network_size(model)
        grid = model.preprocessor_.grid_size((width, height))
        for name, operator in zip(("map_rows", "map_columns"), map_operators(grid, (height, width), model.blur_sigma)):
            self.register_buffer(name, operator.clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The extractor's own forward runs in inference mode, which export cannot trace; same operations.
        features = self.extractor._patch_features(self.extractor._taps(images))  # (B, h, w, D)
        batch, height, width, dim = features.shape
        patches = features.reshape(batch, height * width, dim)
        distances, nearest = self.search(patches.reshape(-1, dim), 1)
        patch_scores = distances[:, 0].reshape(batch, height * width)
        scores = image_scores(patches, patch_scores, nearest[:, 0].reshape(batch, height * width), self.search.bank,
                              self.search, self.num_neighbours, self.reweight)
        maps = anomaly_maps(patch_scores.reshape(batch, height, width), self.map_rows, self.map_columns)
        return scores, maps


def network_size(model: PatchCore) -> tuple[int, int]:
    """(width, height) of the graph's input: the network input of the model's training image size."""
    return model.preprocessor_.network_size(model.training_size_)


def export_onnx(model: PatchCore, path: str | Path, max_bank_rows: int = DEFAULT_MAX_BANK_ROWS) -> Path:
    """Write `model` as one ONNX graph for images of its training size: input `images` (batch, 3, H, W),
    the network input preprocessed as the metadata says; outputs `scores` (batch,) and
    `anomaly_maps` (batch, H, W) on that input."""
    if not isinstance(model, PatchCore):
        raise ValueError(f"only PatchCore models export to ONNX, not {type(model).__name__}")
    model._check_fitted()
    width, height = network_size(model)
    if len(model.preprocessor_.tiles((width, height))) > 1:
        raise ValueError(f"images of the training size give a {width}x{height} network input, larger than one "
                         f"{model.tile_size} px tile; the graph holds one tile: refit with a larger --tile-size, "
                         "a smaller --image-size, or use the library")
    if model.roi_mask_ is not None:
        raise ValueError("models with a region-of-interest mask are not exported yet; use the library")
    rows = model.memory_bank_.shape[0]
    if rows > max_bank_rows:
        raise ValueError(
            f"memory bank has {rows} entries, more than the {max_bank_rows} an exported graph may hold "
            f"(each image compares every patch with every entry); refit with a smaller --coreset-ratio or "
            f"raise --max-bank-rows"
        )
    graph = ScoringGraph(model).eval()
    example = torch.zeros(2, 3, height, width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter may write weights beside the graph (NAME.data): staged in a folder of their own,
    # merged into one file, and the folder removed, so nothing is left next to the model but model.onnx.
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staging = staging_dir / path.name
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                graph, (example,), str(staging), input_names=["images"], output_names=["scores", "anomaly_maps"],
                dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, dynamo=True, verbose=False,
            )
        _add_metadata(staging, model)
        usual_permissions(staging)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that concern its internals, not the user (torchvision ops it skips,
    deprecations inside torch); real errors still raise."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        exporter_log.setLevel(level)


def _add_metadata(path: Path, model: PatchCore) -> None:
    """Record how inputs must be preprocessed and what the model is, inside the ONNX file (weights merged
    into it: one self-contained file)."""
    import onnx

    proto = onnx.load(str(path))  # external weights, if any, are read in and saved inline below
    preprocessor = model.preprocessor_
    width, height = network_size(model)
    preprocessing = {"input_width": width, "input_height": height,
                     "working_size": list(preprocessor.working_size(model.training_size_)),
                     "center_crop": preprocessor.center_crop, "training_image_size": list(model.training_size_),
                     "mean": list(preprocessor.mean), "std": list(preprocessor.std),
                     "order": "RGB, resize (bilinear) to working_size (width, height), centre crop when center_crop "
                              "is set, /255, (x - mean) / std; maps come back on that input"}
    threshold = model.decision_threshold()
    entries = {
        "preprocessing": json.dumps(preprocessing),
        "backbone": model.backbone,
        "memory_bank_shape": json.dumps(list(model.memory_bank_.shape)),
        "threshold": json.dumps(None if threshold is None else threshold.value),
        "false_alarm_rate": json.dumps(model.false_alarm_rate),
        "search": "exact",
        "library_index": json.dumps(describe_index(model.index_)),
        "search_contract": SEARCH_CONTRACT,
    }
    for key, value in entries.items():
        item = proto.metadata_props.add()
        item.key, item.value = key, value
    onnx.save(proto, str(path))


def check_against_pytorch(model: PatchCore, path: str | Path, n_images: int = 2, seed: int = 0) -> tuple[float, float]:
    """Largest absolute differences (scores, maps) between onnxruntime on the exported file and the
    PyTorch graph it was exported from, on seeded random inputs of the graph's input size."""
    import onnxruntime

    generator = torch.Generator().manual_seed(seed)
    width, height = network_size(model)
    images = torch.randn(n_images, 3, height, width, generator=generator)
    with torch.no_grad():
        scores, maps = ScoringGraph(model).eval()(images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores, onnx_maps = session.run(None, {"images": images.numpy()})
    return float(np.abs(onnx_scores - scores.numpy()).max()), float(np.abs(onnx_maps - maps.numpy()).max())
