"""The contract every backbone architecture meets: named forward steps to tap, and its checkpoints' key layout."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """What the feature extractor and the weight loader need from an architecture (an `nn.Module`).

    - `stages()`: the forward pass as named steps in order; running them in turn from the image is the
      network up to its classifier, and a feature tap names one step (e.g. "blocks.4", "layer2").
    - `convert_state_dict(state_dict)`: the published checkpoint's keys mapped to this module's.
    Blocks may also declare `conv_bn_pairs`, the (convolution, batch norm) attributes that
    `fuse_batchnorm` folds for inference. A new architecture: a module with these, a `build`
    function, and a `BackboneSpec` in `registry.py` naming its taps and weights.
    """

    def stages(self) -> list[tuple[str, nn.Module]]: ...

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
