"""Multiply-accumulate counting by forward hooks, on the meta device so big models cost nothing.

A hand-written counter rather than a library (torchinfo, fvcore, thop): those either run a real
forward pass (minutes for a 111-GMAC model on 2 CPU cores) or trace ops we do not need; here the
forward runs on meta tensors, which carry shapes but no data, so the whole zoo table counts in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    # Each output element takes (in_channels / groups) * kh * kw multiply-accumulates; dilation and
    # stride change only the output size, which the hook sees.
    per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * per_output


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 512, 512)) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on an input of ``input_shape``.

    Counts every ``nn.Conv2d`` (grouped, depthwise and dilated included) and ``nn.Linear``; BN,
    activations, adds and resizes are not MACs. The model runs on meta-device copies of its parameters
    and buffers, so its real weights are neither read nor changed. GigaMACs = ``count_macs(...) / 1e9``.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            total += _linear_macs(module, output)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
    }
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            functional_call(model, meta_state, (torch.empty(tuple(input_shape), device="meta"),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
