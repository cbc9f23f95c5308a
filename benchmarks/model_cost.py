"""Multiply-adds per image and parameters of registry models, to size an architecture against another before
training it. Usage: python benchmarks/model_cost.py resnet18:16 vgg16_bn:16 vgg16_bn:24 [--size 32]"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from onp.models import create_model


def cost(model: nn.Module, size: int) -> tuple[float, float]:
    """(million multiply-adds of one image's forward pass through the convolutions and linear layers, million
    parameters)."""
    total = [0]

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out.numel() * mod.in_channels // mod.groups * k
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total[0] / 1e6, sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME:WIDTH")
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    for spec in args.models:
        name, _, width = spec.partition(":")
        kw = {"width": int(width)} if width else {}
        model = create_model(name, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3, **kw)
        macs, params = cost(model, args.size)
        print(f"{spec}: {macs:.1f} M multiply-adds an image, {params:.2f} M parameters")


if __name__ == "__main__":
    main()
