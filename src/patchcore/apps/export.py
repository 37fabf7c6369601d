"""ONNX export of a fitted PatchCore: one graph from preprocessed images (or their tiles) to scores and maps.

A model whose images fit in one tile exports the whole-image graph (images in, image scores and
anomaly maps out). A model that tiles its images, or that has a region of interest, exports the
per-tile graph: tiles and the patches each may count in, patch scores and each tile's Eq. 7 score
out; the tiling rule is in the file's metadata and `predict_with_onnx` is a reference consumer of it.
"""

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
from PIL import Image
from torch import nn

from patchcore.core.patchcore import PatchCore
from patchcore.core.scoring import anomaly_maps, image_scores, map_operators
from patchcore.io.files import usual_permissions
from patchcore.io.visualize import resize_map
from patchcore.search import BankSearch, describe_index

DEFAULT_MAX_BANK_ROWS = 100_000
OPSET = 18
SEARCH_CONTRACT = (
    "The graph finds nearest neighbours exactly. Its scores equal the library's with index 'exact' within 1e-4 "
    "(tested). Against an approximate library index (ivf, the default) they can differ where that index misses "
    "a patch's true nearest neighbour: the approximate distance is then larger; see the README for the measured gap.")


class _BankGraph(nn.Module):
    """What both graphs share, built from copies (exporting never moves or changes the fitted model, a
    CUDA model stays on CUDA): backbone and patch features, exact search of the memory bank, Eq. 7."""

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        self.extractor = copy.deepcopy(model.extractor_).cpu().to(memory_format=torch.contiguous_format)
        self.search = BankSearch(model.memory_bank_)
        self.reweight = model.reweight
        self.num_neighbours = model.num_neighbours

    def _nearest(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patches (B, h, w, D), their distances (B, h, w) to and indices (B, h, w) of their nearest bank rows."""
        features = self.extractor.traceable(images)  # (B, h, w, D)
        distances, nearest = self.search(features.reshape(-1, features.shape[-1]), 1)
        return features, distances[:, 0].reshape(features.shape[:3]), nearest[:, 0].reshape(features.shape[:3])

    def _image_scores(self, patches: torch.Tensor, patch_scores: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        batch, dim = patches.shape[0], patches.shape[-1]
        return image_scores(patches.reshape(batch, -1, dim), patch_scores.reshape(batch, -1), nearest.reshape(batch, -1),
                            self.search.bank, self.search, self.num_neighbours, self.reweight)


class ScoringGraph(_BankGraph):
    """A fitted PatchCore whose images fit in one tile, as one module: network input in, image scores
    and anomaly maps on that input out (the library's own scoring, `patchcore.core.scoring`)."""

    def __init__(self, model: PatchCore) -> None:
        super().__init__(model)
        width, height = network_size(model)
        grid = model.preprocessor_.grid_size((width, height))
        for name, operator in zip(("map_rows", "map_columns"), map_operators(grid, (height, width), model.blur_sigma)):
            self.register_buffer(name, operator.clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, patch_scores, nearest = self._nearest(images)
        return self._image_scores(patches, patch_scores, nearest), anomaly_maps(patch_scores, self.map_rows,
                                                                                 self.map_columns)


class TileGraph(_BankGraph):
    """One tile of a tiled image (or a whole image with a region of interest): tiles and `keep`, which
    of each tile's patches may be the image's worst (its core, inside the region of interest), in;
    patch scores, the worst kept patch's score s* and its Eq. 7 score out. An image's score is the Eq. 7
    score of its tile with the largest s*, exactly the library's (Eq. 7 depends on the worst patch only)."""

    def forward(self, tiles: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        patches, patch_scores, nearest = self._nearest(tiles)
        candidates = torch.where(keep, patch_scores, torch.full_like(patch_scores, -torch.inf))
        scores = self._image_scores(patches, candidates, nearest)
        return patch_scores, candidates.flatten(1).amax(dim=1), scores


def network_size(model: PatchCore) -> tuple[int, int]:
    """(width, height) of the network input of the model's training image size."""
    return model.preprocessor_.network_size(model.training_size_)


def exports_tiles(model: PatchCore) -> bool:
    """Whether `model` exports the per-tile graph: its training images need more than one tile, or it has
    a region of interest (both need per-patch bookkeeping outside the graph)."""
    return len(model.preprocessor_.tiles(network_size(model))) > 1 or model.roi_mask_ is not None


def _graph_and_inputs(model: PatchCore, batch: int, generator: torch.Generator | None = None
                      ) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    """The graph to export, example inputs of `batch` entries by name (seeded random when `generator`
    is given) and its output names."""
    def pixels(height: int, width: int) -> torch.Tensor:
        shape = (batch, 3, height, width)
        return torch.zeros(shape) if generator is None else torch.randn(shape, generator=generator)

    if not exports_tiles(model):
        width, height = network_size(model)
        return ScoringGraph(model).eval(), {"images": pixels(height, width)}, ["scores", "anomaly_maps"]
    rule = tiling(model)
    tiles = rule["tiles"]
    keep = np.stack([tile_keep(tiles[i % len(tiles)], rule) for i in range(batch)])
    first = tiles[0]
    inputs = {"tiles": pixels(first["height"], first["width"]), "keep": torch.from_numpy(keep)}
    return TileGraph(model).eval(), inputs, ["patch_scores", "worst_patch_scores", "scores"]


def tiling(model: PatchCore) -> dict:
    """The tiling rule of the per-tile graph for images of the training size, as the metadata records it."""
    preprocessor = model.preprocessor_
    size = network_size(model)
    region = None if model.region_ is None else model.region_.grid(model.training_size_)
    return {
        "grid": list(preprocessor.grid_size(size)),
        "stride": preprocessor.stride,
        "tiles": [{"x": t.x, "y": t.y, "width": t.width, "height": t.height, "core": list(t.core), "place": list(t.place)}
                  for t in preprocessor.tiles(size)],
        "region_of_interest": None if region is None else ["".join("1" if v else "0" for v in row) for row in region],
        "blur_sigma": model.blur_sigma,
        "rule": "Cut the network input into the listed tiles (x, y, width, height in input pixels). A tile's patch "
                "grid is (height / stride, width / stride); its core (row0, row1, col0, col1 of that grid) is the "
                "part it contributes, placed with its top-left at `place` (row, col) of the image's patch grid "
                "(`grid`: rows, cols); the cores partition the grid. keep = the core, inside the region of interest "
                "(rows of 0/1 over the image's patch grid; null: everywhere). The image score is the `scores` of "
                "the tile with the largest `worst_patch_scores`. The map: stitch each core of `patch_scores` into "
                "the grid (0 outside the region of interest), upsample bilinearly (half-pixel centres) to the "
                "network input and blur with a Gaussian of blur_sigma input pixels (reflect); outside the region "
                "of interest it is undefined.",
    }


def region_grid(rule: dict) -> np.ndarray | None:
    """The tiling rule's region of interest as a boolean patch grid (None: every patch)."""
    rows = rule["region_of_interest"]
    return None if rows is None else np.array([[c == "1" for c in row] for row in rows])


def tile_keep(tile: dict, rule: dict) -> np.ndarray:
    """The `keep` input of one tile: its core, inside the region of interest."""
    stride = rule["stride"]
    keep = np.zeros((tile["height"] // stride, tile["width"] // stride), dtype=bool)
    top, bottom, left, right = tile["core"]
    keep[top:bottom, left:right] = True
    region = region_grid(rule)
    if region is not None:
        row, col = tile["place"]
        keep[top:bottom, left:right] &= region[row : row + bottom - top, col : col + right - left]
    return keep


def export_onnx(model: PatchCore, path: str | Path, max_bank_rows: int = DEFAULT_MAX_BANK_ROWS) -> Path:
    """Write `model` as one ONNX graph for images of its training size.

    Whole-image graph: input `images` (batch, 3, H, W), the network input preprocessed as the metadata
    says; outputs `scores` (batch,) and `anomaly_maps` (batch, H, W) on that input. Per-tile graph (when
    `exports_tiles`): inputs `tiles` (batch, 3, h, w) and `keep` (batch, h / stride, w / stride), outputs
    `patch_scores`, `worst_patch_scores` and `scores`, combined as the metadata's `tiling` rule says
    (`predict_with_onnx` does it)."""
    if not isinstance(model, PatchCore):
        raise ValueError(f"only PatchCore models export to ONNX, not {type(model).__name__}")
    model._check_fitted()
    rows = model.memory_bank_.shape[0]
    if rows > max_bank_rows:
        raise ValueError(
            f"memory bank has {rows} entries, more than the {max_bank_rows} an exported graph may hold "
            f"(each image compares every patch with every entry); refit with a smaller --coreset-ratio or "
            f"raise --max-bank-rows"
        )
    graph, inputs, outputs = _graph_and_inputs(model, batch=2)
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
                graph, tuple(inputs.values()), str(staging), input_names=list(inputs), output_names=outputs,
                dynamic_shapes={name: {0: batch} for name in inputs}, opset_version=OPSET, dynamo=True,
                verbose=False,
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
            # Both inputs of the per-tile graph share the batch axis; the exporter notes it renamed one.
            warnings.filterwarnings("ignore", message=".*The axis name", category=UserWarning)
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
                     "grid_stride": preprocessor.stride, "size_multiple": preprocessor.size_multiple,
                     "order": "RGB, resize (bilinear) to working_size (width, height), centre crop when center_crop "
                              "is set, /255, (x - mean) / std; maps come back on that input (input_width x "
                              "input_height)"}
    threshold = model.decision_threshold()
    entries = {
        "graph": "tile" if exports_tiles(model) else "image",
        "preprocessing": json.dumps(preprocessing),
        "backbone": model.backbone,
        "memory_bank_shape": json.dumps(list(model.memory_bank_.shape)),
        "threshold": json.dumps(None if threshold is None else threshold.value),
        "false_alarm_rate": json.dumps(model.false_alarm_rate),
        "search": "exact",
        "library_index": json.dumps(describe_index(model.index_)),
        "search_contract": SEARCH_CONTRACT,
    }
    if exports_tiles(model):
        entries["tiling"] = json.dumps(tiling(model))
    for key, value in entries.items():
        item = proto.metadata_props.add()
        item.key, item.value = key, value
    onnx.save(proto, str(path))


def check_against_pytorch(model: PatchCore, path: str | Path, n_inputs: int = 2, seed: int = 0) -> dict[str, float]:
    """Largest absolute difference of each output between onnxruntime on the exported file and the
    PyTorch graph it was exported from, on seeded random inputs of the graph's input size."""
    import onnxruntime

    graph, inputs, outputs = _graph_and_inputs(model, n_inputs, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = graph(*inputs.values())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    return {name: float(np.abs(got - want.numpy()).max()) for name, got, want in zip(outputs, found, expected)}


def predict_with_onnx(path: str | Path, images: list, batch_size: int = 4) -> list[tuple[float, np.ndarray]]:
    """(image score, anomaly map at the image's own size, NaN where not inspected) of each image (a path or
    PIL image) by onnxruntime on an exported file, from the file's metadata alone: the reference for deploying
    either graph. Images are resized to the training size's working size, as the metadata says."""
    import onnxruntime

    from patchcore.core.preprocessing import Preprocessor
    from patchcore.io.images import load_image

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    settings = json.loads(metadata["preprocessing"])
    # Files exported before the sizes' multiple was recorded were all CNNs: stride 8, multiples of 16.
    preprocessor = Preprocessor(tuple(settings["working_size"]), tuple(settings["mean"]), tuple(settings["std"]),
                                settings["center_crop"], stride=settings.get("grid_stride", 8),
                                size_multiple=settings.get("size_multiple", 16))
    pictures = [load_image(image) for image in images]
    inputs = [preprocessor(picture).numpy() for picture in pictures]
    if metadata["graph"] == "image":
        results = []
        for start in range(0, len(inputs), batch_size):
            scores, maps = session.run(None, {"images": np.stack(inputs[start : start + batch_size])})
            sizes = [picture.size for picture in pictures[start : start + batch_size]]
            results += [(score, _network_map_on_original(amap, preprocessor, size))
                        for score, amap, size in zip(scores.tolist(), maps, sizes)]
        return results
    rule = json.loads(metadata["tiling"])
    tiles = rule["tiles"]
    keeps = np.stack([tile_keep(tile, rule) for tile in tiles])
    region = region_grid(rule)
    results = []
    for picture, pixels in zip(pictures, inputs):
        crops = np.stack([pixels[:, t["y"] : t["y"] + t["height"], t["x"] : t["x"] + t["width"]] for t in tiles])
        parts = [session.run(None, {"tiles": crops[i : i + batch_size], "keep": keeps[i : i + batch_size]})
                 for i in range(0, len(tiles), batch_size)]
        patch_scores, worst, scores = (np.concatenate(outputs) for outputs in zip(*parts))
        grid = np.zeros(rule["grid"], dtype=np.float32)
        for tile, tile_scores in zip(tiles, patch_scores):
            top, bottom, left, right = tile["core"]
            row, col = tile["place"]
            grid[row : row + bottom - top, col : col + right - left] = tile_scores[top:bottom, left:right]
        if region is not None:
            grid[~region] = 0.0
        # As the library maps patch scores onto the original image (the same code).
        amap = preprocessor.to_original(torch.from_numpy(grid)[None], picture.size, rule["blur_sigma"])[0]
        if region is not None:
            amap[~np.asarray(Image.fromarray(region).resize(picture.size, Image.NEAREST))] = np.nan
        results.append((float(scores[int(worst.argmax())]), amap))
    return results


def _network_map_on_original(amap: np.ndarray, preprocessor, size: tuple[int, int]) -> np.ndarray:
    """The image graph's map (on the network input) resized onto the part of the original image of (W, H)
    `size` that the network saw; NaN elsewhere (outside a centre crop)."""
    left, top, right, bottom = preprocessor.inspected_box(size)
    box = (right - left, bottom - top)
    if (amap.shape[1], amap.shape[0]) != box:
        amap = resize_map(amap, box)
    if box == size:
        return amap
    full = np.full((size[1], size[0]), np.nan, dtype=np.float32)
    full[top:bottom, left:right] = amap
    return full
