"""Folding inference-mode batch norms into the convolutions before them: same outputs, less work."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every (convolution, batch norm) pair of `module` in place, for inference only.

    Pairs are found as consecutive children of `nn.Sequential`s and as the (conv, bn) attribute
    names a block class declares in `conv_bn_pairs`. A folded norm becomes `nn.Identity`, so the
    module computes the same function (to float rounding) with one pass less over each feature map.
    """
    module.eval()
    for parent in list(module.modules()):
        for conv_name, bn_name in getattr(parent, "conv_bn_pairs", ()):
            conv, norm = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, bn_name, nn.Identity())
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            for (conv_name, conv), (bn_name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                    setattr(parent, bn_name, nn.Identity())
    return module
