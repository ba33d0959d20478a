"""BatchNorm whose training-mode statistics cover the global batch of all ranks.

Without it, each rank normalises with the mean and variance of its own shard
(``B / R`` images), and its running statistics, which every attack at test
time and inside training uses (attacks run BatchNorm in eval mode), are
estimated from those smaller batches; DDP then copies rank 0's running
statistics to the other ranks at each forward pass.

:func:`sync_batchnorm` puts :class:`torch.nn.SyncBatchNorm` (Ioffe & Szegedy
2015, https://arxiv.org/abs/1502.03167, with statistics reduced over the process
group) into a CUDA model. PyTorch implements it for accelerators only, so a CPU
model gets :class:`SyncBatchNorm`, which computes the same with differentiable
all-reduces::

    mean = sum_r sum_i x_ri / N,   var = sum_r sum_i (x_ri - mean)^2 / N,
    y = (x - mean) / sqrt(var + eps) * weight + bias

over all ``N`` values per channel of all ranks; the running variance takes the
unbiased ``var * N / (N - 1)``, as BatchNorm does in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank; its gradient is again the sum over ranks of the
    upstream gradients, since each rank's loss depends on every rank's ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU tensors (Gloo); plain BatchNorm in eval
    mode or without a process group. (DDP refuses :class:`torch.nn.SyncBatchNorm` in a
    CPU module, so this is not a subclass of it.)"""

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            self._check_input_dim(input)
            return self._global_batch_norm(input)
        return super().forward(input)

    def _global_batch_norm(self, x: Tensor) -> Tensor:
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = totals[-1]
        mean = totals[:-1] / n
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims), group) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.item())
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * (n / max(n - 1, 1)), alpha=factor)


SYNCED = (nn.SyncBatchNorm, SyncBatchNorm)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` by a synchronised one sharing its
    parameters and buffers (in place; state-dict names unchanged):
    :class:`torch.nn.SyncBatchNorm` for a model on CUDA, :class:`SyncBatchNorm` on CPU."""
    device = next(model.parameters()).device
    cls = nn.SyncBatchNorm if device.type == "cuda" else SyncBatchNorm
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SYNCED):
                setattr(parent, name, _moved(child, cls, kind=type(child)))
    return model


def restore_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`sync_batchnorm`: each layer it replaced back to its original class."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SYNCED) and hasattr(child, "original_kind"):
                setattr(parent, name, _moved(child, child.original_kind))
    return model


def _moved(
    layer: nn.modules.batchnorm._BatchNorm, cls: type, kind: type | None = None
) -> nn.Module:
    """A ``cls`` layer holding ``layer``'s very parameters and buffers (an optimizer
    built on them keeps working), in its training mode."""
    new = cls(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    )
    if kind is not None:
        new.original_kind = kind
    new.weight, new.bias = layer.weight, layer.bias
    new.running_mean, new.running_var = layer.running_mean, layer.running_var
    new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new
