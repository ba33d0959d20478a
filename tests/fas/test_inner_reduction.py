"""train.inner_reduction: the losses of a domain's batch averaged over its frames (the
authors' code, the default) or summed (the paper's equations)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from osad.fas import trainer
from osad.fas.methods import META_METHODS
from tests.fas.test_trainer import _batches, _tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

SPLIT = ([0, 2], 1)
ADAPT = trainer.adapt


def _recorded_inner_steps(monkeypatch, model, batches, reduction, lr=0.3):
    """meta_step's inner steps as (theta, adapted) pairs, for rfmeta."""
    steps = []

    def recording(params, loss, step, second_order):
        adapted = ADAPT(params, loss, step, second_order)
        steps.append((params, adapted))
        return adapted

    monkeypatch.setattr(trainer, "adapt", recording)
    trainer.meta_step(model, batches, SPLIT, META_METHODS["rfmeta"], lr, 10.0, 1.0, reduction)
    return steps


def test_a_summed_inner_step_is_inner_lr_times_the_gradient_of_the_summed_bce(monkeypatch):
    """With reduction sum, theta_i = theta - lr * grad sum_frames BCE: checked in float64
    against the BCE written out by hand (and, for M's last layer, its closed-form
    gradient sum_frames (p - y) h), for each meta-train domain."""
    torch.manual_seed(0)
    model, batches, lr = _tiny_model().train(), _batches(), 0.3
    steps = _recorded_inner_steps(monkeypatch, model, batches, "sum", lr)
    assert len(steps) == len(SPLIT[0])
    for domain, (theta, adapted) in zip(SPLIT[0], steps, strict=True):
        batch = batches[domain]
        pooled = model.learner.features(model.features(batch.images)[1])
        logits = model.learner.fc(pooled).squeeze(1)
        p, y = torch.sigmoid(logits), batch.labels
        summed = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum()
        grads = torch.autograd.grad(summed, list(theta.values()))
        for (name, value), grad in zip(theta.items(), grads, strict=True):
            torch.testing.assert_close(adapted[name], value - lr * grad, rtol=1e-10, atol=1e-12)
        by_hand = ((p - y)[:, None] * pooled).sum(0, keepdim=True)
        step = (theta["fc.weight"] - adapted["fc.weight"]) / lr
        torch.testing.assert_close(step, by_hand, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            (theta["fc.bias"] - adapted["fc.bias"]) / lr, (p - y).sum().reshape(1)
        )


def test_the_summed_inner_step_is_the_batch_size_times_the_mean_one(monkeypatch):
    """The two reductions differ: summed over B frames, the step is B times as long."""
    torch.manual_seed(0)
    model, batches = _tiny_model().train(), _batches()
    mean = _recorded_inner_steps(monkeypatch, model, batches, "mean")
    summed = _recorded_inner_steps(monkeypatch, model, batches, "sum")
    frames = len(batches[0].labels)
    for (theta, a_mean), (_, a_sum) in zip(mean, summed, strict=True):
        for name, value in theta.items():
            torch.testing.assert_close(a_sum[name] - value, frames * (a_mean[name] - value))
        assert not torch.allclose(a_sum["fc.weight"], a_mean["fc.weight"])


def _authors_mean_loss(model, batches, split, lr):
    """rfmeta's loss as osad computed it before train.inner_reduction existed (every loss
    mean-reduced with torch's default), written out for the comparison below."""
    encoded = [model.features(b.images) for b in batches]

    def cls(i, params=None):
        features = encoded[i][1]
        logits = (
            model.learner(features)
            if params is None
            else trainer.call_with(model.learner, params, features)
        )
        return F.binary_cross_entropy_with_logits(logits, batches[i].labels)

    def depth(ids):
        return sum(F.mse_loss(model.depth(encoded[i][0]), batches[i].depth) for i in ids)

    train_ids, test_id = split
    cls_train = [cls(i) for i in train_ids]
    theta = dict(model.learner.named_parameters())
    adapted = [trainer.adapt(theta, loss, lr, True) for loss in cls_train]
    meta_train = sum(cls_train) + 10.0 * depth(train_ids)
    meta_test = sum(cls(test_id, p) for p in adapted) + 10.0 * depth([test_id])
    return meta_train + meta_test


def test_mean_reduction_is_bit_identical_to_the_mean_reduced_losses():
    """The default keeps the loss and every gradient exactly (torch.equal) as they were."""
    torch.manual_seed(0)
    model, batches = _tiny_model().train(), _batches()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = trainer.meta_step(model, batches, SPLIT, META_METHODS["rfmeta"], 0.3, 10.0, 1.0, "mean")
    got_grads = torch.autograd.grad(got.loss, list(model.parameters()), allow_unused=True)
    model.load_state_dict(state)  # the BatchNorm statistics as they were
    expected = _authors_mean_loss(model, batches, SPLIT, 0.3)
    grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    assert torch.equal(got.loss, expected)
    for a, b in zip(got_grads, grads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("method", ["rfmeta", "rfmeta-aggregated", "no-meta"])
def test_sum_sums_every_loss_over_the_frames(method):
    """sum reduces classification and depth over the frames in every term: meta-train,
    the inner step and meta-test (per frame the depth error is the map's mean). So each
    term is B times its mean, with meta-test's adapted learners those of B times the
    inner step (B: frames per domain)."""
    torch.manual_seed(0)
    model, batches = _tiny_model().train(), _batches()
    frames, lr = len(batches[0].labels), 0.05

    def terms(reduction, step):
        out = trainer.meta_step(
            model, batches, SPLIT, META_METHODS[method], step, 10.0, 1.0, reduction
        )
        return out.terms

    summed, mean = terms("sum", lr), terms("mean", frames * lr)
    assert set(summed) == set(mean) and len(summed) >= 2
    for name, value in summed.items():
        torch.testing.assert_close(value, frames * mean[name], rtol=1e-10, atol=0)
