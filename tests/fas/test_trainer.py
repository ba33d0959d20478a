"""The meta-learning step: second-order inner updates, domain splits, BatchNorm buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osad.fas.frames import FasFrames
from osad.fas.model import FasNet
from osad.fas.trainer import (
    META_METHODS,
    BalancedSampler,
    DomainBatch,
    adapt,
    call_with,
    draw_split,
    meta_step,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce_grad_hessian(theta, x, y):
    """Gradient and Hessian of mean BCE(sigmoid(x theta), y) in theta (hand formulas)."""
    p = _sigmoid(x @ theta)
    grad = ((p - y)[:, None] * x).mean(0)
    hessian = (x.T * (p * (1 - p))) @ x / len(y)
    return grad, hessian


@pytest.mark.parametrize("second_order", [True, False])
def test_inner_step_gradient_matches_the_hand_computed_one(second_order):
    """For a linear learner, d L_test(theta - a grad L_train(theta)) / d theta is
    (I - a H_train) grad L_test(theta') with the second-order term, grad L_test(theta')
    without it."""
    torch.manual_seed(0)
    learner = nn.Linear(3, 1).double()
    f_train, f_test = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    y_train = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.float64)
    y_test = torch.tensor([0, 1, 1, 0, 1], dtype=torch.float64)
    lr = 0.7

    def loss(params, features, labels):
        logits = call_with(learner, params, features).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, labels)

    params = dict(learner.named_parameters())
    adapted = adapt(params, loss(params, f_train, y_train), lr, second_order)
    grads = torch.autograd.grad(loss(adapted, f_test, y_test), list(params.values()))
    got = np.concatenate([grads[0].flatten().numpy(), grads[1].numpy()])

    # theta = [w, b] with features augmented by a constant 1 for the bias
    theta = np.concatenate([learner.weight.detach().numpy()[0], learner.bias.detach().numpy()])
    x_train = np.hstack([f_train.numpy(), np.ones((6, 1))])
    x_test = np.hstack([f_test.numpy(), np.ones((5, 1))])
    g_train, h_train = _bce_grad_hessian(theta, x_train, y_train.numpy())
    g_test, _ = _bce_grad_hessian(theta - lr * g_train, x_test, y_test.numpy())
    expected = (np.eye(4) - lr * h_train) @ g_test if second_order else g_test
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # the Hessian term is not negligible here, so the two variants really differ
    assert np.abs((np.eye(4) - lr * h_train) @ g_test - g_test).max() > 1e-3


def _tiny_model() -> FasNet:
    return FasNet(8, stem_width=2, blocks=[[3]], depth_widths=[2], learner_widths=[3, 3]).double()


def _batches(n_domains: int = 3, per_class: int = 3) -> list[DomainBatch]:
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([1.0] * per_class + [0.0] * per_class, dtype=torch.float64)
    return [
        DomainBatch(
            torch.rand(2 * per_class, 3, 8, 8, generator=g, dtype=torch.float64),
            labels,
            torch.rand(2 * per_class, 1, 4, 4, generator=g, dtype=torch.float64)
            * labels[:, None, None, None],
        )
        for _ in range(n_domains)
    ]


def _meta_loss(model, batches, method, lr=0.5):
    return meta_step(model, batches, ([0, 2], 1), META_METHODS[method], lr, 10.0, 1.0).loss


@pytest.mark.parametrize("name", ["extractor.stem.0.weight", "learner.fc.weight"])
def test_outer_gradient_differentiates_through_the_inner_steps(name):
    """The gradient of the whole meta objective (in F and in M) equals central finite
    differences of its value only when the inner steps are second order."""
    torch.manual_seed(0)
    model = _tiny_model().train()
    batches = _batches()
    param = dict(model.named_parameters())[name]

    def loss_at(index, value):
        original = param.view(-1)[index].item()
        with torch.no_grad():
            param.view(-1)[index] = value
        loss = _meta_loss(model, batches, "rfmeta").item()
        with torch.no_grad():
            param.view(-1)[index] = original
        return loss

    def numeric(index, h=1e-6):
        value = param.view(-1)[index].item()
        return (loss_at(index, value + h) - loss_at(index, value - h)) / (2 * h)

    expected = np.array([numeric(i) for i in range(3)])
    for method, matches in (("rfmeta", True), ("rfmeta-first-order", False)):
        model.zero_grad()
        _meta_loss(model, batches, method).backward()
        got = param.grad.view(-1)[:3].numpy()
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-8) == matches, method


def test_aggregated_variant_takes_one_step_on_the_summed_losses():
    torch.manual_seed(0)
    model = _tiny_model().train()
    batches = _batches()
    lr = 0.5
    features = [model.features(b.images)[1] for b in batches]
    theta = dict(model.learner.named_parameters())

    def bce(params, i, j):
        logits = call_with(model.learner, params, features[i])
        return F.binary_cross_entropy_with_logits(logits, batches[j].labels)

    def stepped(loss):
        grads = torch.autograd.grad(loss, list(theta.values()), retain_graph=True)
        return {k: p - lr * g for (k, p), g in zip(theta.items(), grads, strict=True)}

    fine = sum(bce(stepped(bce(theta, i, i)), 1, 1) for i in (0, 2))
    aggregated = bce(stepped(bce(theta, 0, 0) + bce(theta, 2, 2)), 1, 1)
    for method, expected in (("rfmeta", fine), ("rfmeta-aggregated", aggregated)):
        out = meta_step(model, batches, ([0, 2], 1), META_METHODS[method], lr, 10.0, 1.0)
        assert out.terms["cls_test"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert fine.item() != pytest.approx(aggregated.item())


def test_no_meta_trains_every_domain_jointly():
    model = _tiny_model().train()
    batches = _batches()
    out = meta_step(model, batches, ([0, 2], 1), META_METHODS["no-meta"], 0.5, 10.0, 1.0)
    assert set(out.terms) == {"cls", "depth"}
    with torch.no_grad():
        cls = sum(
            F.binary_cross_entropy_with_logits(model.learner(model.features(b.images)[1]), b.labels)
            for b in batches
        )
    assert out.terms["cls"].item() == pytest.approx(cls.item(), rel=1e-10)
    assert out.loss.item() == pytest.approx(cls.item() + 10 * out.terms["depth"].item())


def test_no_depth_model_has_no_depth_estimator_and_no_depth_loss():
    model = FasNet(8, stem_width=2, blocks=[[3]], learner_widths=[3], depth_head=False).double()
    out = meta_step(model, _batches(), ([0, 2], 1), META_METHODS["no-depth"], 0.5, 10.0, 1.0)
    assert model.depth is None
    assert out.terms["depth_train"].item() == 0 and out.terms["depth_test"].item() == 0


@pytest.mark.parametrize("n_domains", [3, 4])
def test_every_domain_is_meta_test_equally_often(n_domains):
    generator = torch.Generator().manual_seed(0)
    draws = 3000
    counts = np.zeros(n_domains)
    for _ in range(draws):
        train, test = draw_split(n_domains, generator)
        assert sorted([*train, test]) == list(range(n_domains))
        counts[test] += 1
    # binomial standard deviation is about 0.009 at 3000 draws
    np.testing.assert_allclose(counts / draws, 1 / n_domains, atol=0.03)


def test_adapted_passes_leave_batchnorm_statistics_alone():
    torch.manual_seed(0)
    learner = FasNet(8, stem_width=2, blocks=[[3]], learner_widths=[4]).learner.train()
    features = torch.randn(6, 3, 4, 4)
    before = {k: v.clone() for k, v in learner.named_buffers()}
    params = dict(learner.named_parameters())
    out = call_with(learner, params, features)
    for key, value in learner.named_buffers():
        assert torch.equal(value, before[key]), key
    # same parameters: the same output as the module itself (batch statistics)
    assert torch.allclose(out, learner(features))
    assert not torch.equal(learner.features[1].running_mean, before["features.1.running_mean"])


def test_sampler_draws_balanced_batches_and_each_frame_once_per_pass():
    labels = torch.tensor([1] * 6 + [0] * 9)
    frames = FasFrames(
        images=torch.arange(15, dtype=torch.float32).view(15, 1, 1, 1).expand(15, 3, 2, 2),
        labels=labels,
        depth=torch.zeros(15, 1, 1, 1),
        videos=torch.arange(15),
        video_names=tuple(map(str, range(15))),
    )
    sampler = BalancedSampler(frames, 3, torch.Generator().manual_seed(0))
    drawn = [sampler.draw() for _ in range(2)]
    for batch in drawn:
        assert batch.labels.tolist() == [1.0] * 3 + [0.0] * 3
    real_ids = torch.cat([b.images[:3, 0, 0, 0] for b in drawn])
    assert sorted(real_ids.tolist()) == list(range(6))
