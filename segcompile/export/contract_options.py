"""The click options that describe a model's input and output, shared by ``export`` and ``build``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from segcompile.export.input_contract import (
    CHANNEL_ORDERS,
    LAYOUTS,
    InputContract,
    parse_channel_values,
    parse_input_shape,
    std_from_options,
)

_OPTIONS = (
    click.option("--input-shape", "input_shape", default=None, metavar="1,3,H,W",
                 help="Fix an ONNX input's dynamic dimensions (1,H,W,3 for a channels-last model)."),
    click.option("--mean", default=None, metavar="R,G,B",
                 help="Subtracted from 0..255 pixels, per channel (one value for all three).  [default: the "
                      "model's, else ImageNet's 123.675,116.28,103.53]"),
    click.option("--std", default=None, metavar="R,G,B",
                 help="Divides after the mean  [default: the model's, else ImageNet's 58.395,57.12,57.375]."),
    click.option("--scale", default=None, metavar="R,G,B",
                 help="Multiplies after the mean (1/std); instead of --std."),
    click.option("--channel-order", type=click.Choice(CHANNEL_ORDERS, case_sensitive=False), default=None,
                 help="Channel order the model expects  [default: the model's, else RGB]."),
    click.option("--layout", type=click.Choice(LAYOUTS, case_sensitive=False), default=None,
                 help="Input layout of an ONNX model  [default: inferred from where its 3 channels are]."),
    click.option("--threshold", type=float, default=None,
                 help="One-channel probability outputs: foreground where the output exceeds this "
                      "[default: 0.5]."),
)
CONTRACT_KEYS = ("input_shape", "mean", "std", "scale", "channel_order", "layout", "threshold")


def input_contract_options(command: Callable) -> Callable:
    """Add every input/output contract option to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def contract_from_options(options: dict[str, Any]) -> tuple[InputContract, tuple[int, int, int, int] | None]:
    """Pop the contract options out of a command's keyword arguments; return the contract and input shape."""
    values = {key: options.pop(key, None) for key in CONTRACT_KEYS}
    contract = InputContract(
        mean=parse_channel_values(values["mean"], "--mean") if values["mean"] is not None else None,
        std=std_from_options(values["std"], values["scale"]),
        channel_order=values["channel_order"].upper() if values["channel_order"] else None,
        layout=values["layout"].upper() if values["layout"] else None,
        threshold=values["threshold"],
    )
    shape = parse_input_shape(values["input_shape"]) if values["input_shape"] is not None else None
    return contract, shape
