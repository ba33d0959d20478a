"""SyncBatchNorm on CPU: two half batches behave as one BatchNorm on the whole batch."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from osad.distributed import SyncBatchNorm, restore_batchnorm, sync_batchnorm
from tests.distributed.spawn import run_ranks


def _layers():
    return [nn.BatchNorm2d(3, momentum=0.3), nn.BatchNorm1d(5, momentum=None)]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 3, 4, 4, generator=g) * 3 + 1, torch.randn(6, 5, generator=g) - 2]


def _reference():
    """Output, input gradient, parameter gradients and buffers of one process's BatchNorm."""
    out = []
    for layer, x in zip(_layers(), _inputs(), strict=True):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, layer.num_features))
        x = x.requires_grad_()
        y = layer(x)
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        out.append((y.detach(), x.grad, layer.weight.grad, layer.bias.grad, layer.state_dict()))
    return out


def _check_half_batches(rank: int, expected) -> None:
    for layer, x, want in zip(_layers(), _inputs(), expected, strict=True):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, layer.num_features))
        model = sync_batchnorm(nn.Sequential(layer))
        assert isinstance(model[0], SyncBatchNorm) and model[0].weight is layer.weight
        half = x.shape[0] // 2
        mine = slice(rank * half, (rank + 1) * half)
        x = x.requires_grad_()
        y = model(x[mine])
        weights = torch.arange(x.numel()).view_as(x)[mine]
        (y * weights).sum().backward()
        y_want, x_grad, w_grad, b_grad, buffers = want
        torch.testing.assert_close(y.detach(), y_want[mine])
        torch.testing.assert_close(x.grad[mine], x_grad[mine])
        for grad, want_grad in ((layer.weight.grad, w_grad), (layer.bias.grad, b_grad)):
            dist.all_reduce(grad)  # what DDP does (as a mean, with the loss summed)
            torch.testing.assert_close(grad, want_grad)
        for key, value in model[0].state_dict().items():
            torch.testing.assert_close(value, buffers[key])
        assert type(restore_batchnorm(model)[0]) is type(layer)


@pytest.mark.slow
def test_sync_batchnorm_on_two_ranks_equals_batchnorm_on_the_whole_batch():
    run_ranks(_check_half_batches, 2, _reference())


def test_without_process_group_it_is_plain_batchnorm():
    plain, x = nn.BatchNorm2d(3), _inputs()[0]
    synced = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[0].running_var, plain.running_var)
    assert type(restore_batchnorm(synced)[0]) is nn.BatchNorm2d
