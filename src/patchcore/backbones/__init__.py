"""Backbone networks: architectures written here and a registry of them by name."""

from patchcore.backbones.base import Backbone
from patchcore.backbones.registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    LoadedBackbone,
    get_backbone_spec,
    load_backbone,
    resolve_layers,
)

__all__ = ["Backbone", "BACKBONES", "DEFAULT_BACKBONE", "BackboneSpec", "LoadedBackbone", "get_backbone_spec", "load_backbone", "resolve_layers"]
