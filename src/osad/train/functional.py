"""Forward passes with parameters or statistics other than the module's own."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call


def call_with(module: nn.Module, params: dict[str, Tensor], *inputs: Tensor) -> Tensor:
    """``module(*inputs)`` with ``params`` in place of its parameters.

    BatchNorm running statistics update copies of the buffers, so these passes
    leave the module's own statistics untouched.
    """
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    return functional_call(module, {**params, **buffers}, inputs)
