"""Regularised fine-grained meta-learning for domain-generalised face anti-spoofing.

Shao, Lan and Yuen, AAAI 2020, https://arxiv.org/abs/1911.10771. With the
feature extractor F (theta_F), depth estimator D (theta_D) and meta learner M
(theta_M) of :class:`~osad.fas.model.FasNet`, each iteration:

1. draws a batch (as many real as attack frames) from every source domain and
   splits the N domains at random into N-1 meta-train domains and 1 meta-test
   domain;
2. meta-train: for each meta-train domain i,
   ``L_cls_i = BCE(M(F(x_i); theta_M), y_i)``,
   ``L_dep_i = ||D(F(x_i)) - depth_i||^2`` (mean squared error), and one inner step
   ``theta_M_i = theta_M - alpha grad_theta_M L_cls_i`` (second order: the
   gradient keeps its graph, so the outer update differentiates through it);
3. meta-test on domain t: ``sum_i BCE(M(F(x_t); theta_M_i), y_t)`` and ``L_dep_t``;
4. outer update of F, D and M (Adam) on
   ``sum_i L_cls_i + w_dep sum_i L_dep_i
   + w_test (sum_i BCE(M(F(x_t); theta_M_i), y_t) + w_dep L_dep_t)``.

Each BCE and MSE is the mean over the domain's batch (the authors' code) or, with
``train.inner_reduction=sum``, the sum over its frames (the paper's equations;
:func:`meta_step`).

M runs with the adapted parameters through :func:`torch.func.functional_call`;
its BatchNorm layers normalise with the batch's statistics there and update
copies of the running statistics, so only the meta-train passes with theta_M
move them. F runs once per domain, so its BatchNorm sees one domain per batch.

With a run directory the loop writes checkpoints as ``config.checkpoint`` says (a
step is one iteration, an epoch the ``train.eval_every`` iterations that end with a
validation record), saves one and stops on SIGINT/SIGTERM, and continues from any
checkpoint exactly, through the open-set loop's machinery
(:class:`~osad.train.checkpoints.CheckpointPolicy`,
:class:`~osad.train.state.TrainState`): on the same kind of device a resumed run ends
with the same weights and history as an uninterrupted one (docs/reliability.md).

Variants (the paper's ablations, ``method=``): ``rfmeta`` (the above),
``rfmeta-aggregated`` (MLDG-style, Li et al. AAAI 2018: one inner step on the
summed meta-train losses, one adapted learner), ``rfmeta-first-order`` (the
inner gradient is treated as a constant), ``no-meta`` (every source domain
trained jointly on ``sum L_cls + w_dep sum L_dep``), ``no-depth`` (``rfmeta``
without D) and ``baseline`` (neither meta-learning nor depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from osad.data.augment import to_float
from osad.errors import CheckpointError, InputError, shown
from osad.eval.metrics import auroc, eer
from osad.fas.config import FasConfig, make_fas_config
from osad.fas.data import FasData
from osad.fas.evaluate import frame_scores
from osad.fas.frames import ATTACK, REAL, FasFrames
from osad.fas.methods import META_METHODS, MetaMethod
from osad.fas.model import FasNet
from osad.models import check_fits, create_model
from osad.rundir import MAIN, RunDir
from osad.runlog import RunLog
from osad.runtime import StopRequest, resolve_device, seed_everything, stop_signals
from osad.storage import tensors_sha256
from osad.train.checkpoints import CheckpointPolicy, naming_last_good
from osad.train.functional import call_with
from osad.train.state import Network, Schedule, TrainState
from osad.train.step import TrainResult, take_step


def fas_model_spec(config: FasConfig) -> tuple[str, dict[str, Any]]:
    """(registry name, constructor kwargs) of the network ``config`` trains."""
    m = config.model
    return "fas-net", {
        "image_size": config.data.image_size,
        "stem_width": m.stem_width,
        "blocks": [list(b) for b in m.blocks],
        "depth_widths": list(m.depth_widths),
        "learner_widths": list(m.learner_widths),
        "depth_head": META_METHODS[config.method].depth and config.train.depth_weight > 0,
    }


# ---------------------------------------------------------------------------
# The pieces of one step


def draw_split(num_domains: int, generator: torch.Generator) -> tuple[list[int], int]:
    """(meta-train domains, meta-test domain): a uniformly random one of the N
    ways to hold one domain out."""
    order = torch.randperm(num_domains, generator=generator).tolist()
    return order[:-1], order[-1]


def adapt(
    params: dict[str, Tensor], loss: Tensor, lr: float, second_order: bool
) -> dict[str, Tensor]:
    """One SGD step ``theta' = theta - lr * grad_theta loss``.

    With ``second_order`` the gradient is part of the graph
    (``create_graph=True``), so differentiating a loss of ``theta'`` brings in
    the Hessian term ``-lr * H g``; without it the gradient is a constant.
    """
    grads = torch.autograd.grad(
        loss, list(params.values()), create_graph=second_order, retain_graph=True
    )
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


@dataclass
class DomainBatch:
    images: Tensor  # float RGB in [0, 1]
    labels: Tensor  # float, 1 = real
    depth: Tensor  # float depth target in [0, 1]


class BalancedSampler:
    """Endless batches of ``batch_size`` real and ``batch_size`` attack frames of one
    domain, each class drawn without replacement until exhausted, then reshuffled."""

    def __init__(self, frames: FasFrames, batch_size: int, generator: torch.Generator) -> None:
        self.frames = frames
        self.batch_size = batch_size
        self.generator = generator
        labels = frames.labels.cpu()
        self.pools = [torch.nonzero(labels == c).squeeze(1) for c in (REAL, ATTACK)]
        self.queues = [p[:0] for p in self.pools]

    def _take(self, c: int) -> Tensor:
        while len(self.queues[c]) < self.batch_size:
            pool = self.pools[c]
            shuffled = pool[torch.randperm(len(pool), generator=self.generator)]
            self.queues[c] = torch.cat([self.queues[c], shuffled])
        taken, self.queues[c] = self.queues[c][: self.batch_size], self.queues[c][self.batch_size :]
        return taken

    def state_tensors(self) -> dict[str, Tensor]:
        """The frames still queued for each class (``real``, ``attack``): with the
        generator's state they say which batches come next."""
        return {"real": self.queues[0], "attack": self.queues[1]}

    def restore_tensors(self, tensors: dict[str, Tensor], source: str) -> None:
        """Queue what :meth:`state_tensors` gave; refuses queues that are not 1-D int64
        indices of this domain's frames of their class (:class:`CheckpointError`)."""
        queues = []
        for c, name in enumerate(("real", "attack")):
            queue = tensors.get(name)
            fits = queue is not None and queue.dtype == torch.int64 and queue.dim() == 1
            if not (fits and bool(torch.isin(queue, self.pools[c]).all())):
                raise CheckpointError(
                    f"{source}: '{name}' must hold the queued indices of this domain's "
                    f"{name} training frames"
                )
            queues.append(queue)
        self.queues = queues

    def draw(self) -> DomainBatch:
        real, attack = self._take(0), self._take(1)  # pools are ordered (REAL, ATTACK)
        index = torch.cat([real, attack]).to(self.frames.labels.device)
        return DomainBatch(
            to_float(self.frames.images[index]),
            self.frames.labels[index].float(),
            to_float(self.frames.depth[index]),
        )


@dataclass
class MetaLosses:
    loss: Tensor
    terms: dict[str, Tensor]


def meta_step(
    model: FasNet,
    batches: list[DomainBatch],
    split: tuple[list[int], int],
    method: MetaMethod,
    inner_lr: float,
    depth_weight: float,
    meta_test_weight: float,
    reduction: str = "mean",
) -> MetaLosses:
    """The loss of one iteration (module docstring) on one batch per source domain.

    ``reduction`` (``train.inner_reduction``) says how each domain's losses are reduced
    over its batch's frames. ``"mean"`` (the authors' code): BCE averaged over the
    frames, MSE over the frames and depth-map pixels. ``"sum"`` (the paper's
    equations, where every loss is a sum over the domain's samples): BCE and the
    per-frame depth MSE (averaged over the map's pixels, so ``depth_weight`` keeps its
    balance against BCE) summed over the frames, in every term: the inner step's
    loss, meta-train and meta-test. With B frames a domain, the inner step is then B
    times the mean-reduced one, and the outer loss B times larger (immaterial to Adam
    but for its epsilon and weight decay).
    """
    encoded = [model.features(b.images) for b in batches]

    def cls_loss(i: int, params: dict[str, Tensor] | None = None) -> Tensor:
        features = encoded[i][1]
        logits = (
            model.learner(features)
            if params is None
            else call_with(model.learner, params, features)
        )
        return F.binary_cross_entropy_with_logits(logits, batches[i].labels, reduction=reduction)

    def frame_depth_loss(i: int) -> Tensor:
        target = batches[i].depth
        if reduction == "mean":
            return F.mse_loss(model.depth(encoded[i][0]), target)
        return F.mse_loss(model.depth(encoded[i][0]), target, reduction="sum") / target[0].numel()

    def depth_loss(ids: list[int]) -> Tensor:
        if model.depth is None:
            return torch.zeros((), device=batches[0].images.device)
        return sum(frame_depth_loss(i) for i in ids)

    if not method.meta:
        every = list(range(len(batches)))
        terms = {"cls": sum(cls_loss(i) for i in every), "depth": depth_loss(every)}
        return MetaLosses(terms["cls"] + depth_weight * terms["depth"], terms)

    train_ids, test_id = split
    cls_train = [cls_loss(i) for i in train_ids]
    theta = dict(model.learner.named_parameters())
    if method.inner == "per-domain":
        adapted = [adapt(theta, loss, inner_lr, method.second_order) for loss in cls_train]
    else:
        adapted = [adapt(theta, sum(cls_train), inner_lr, method.second_order)]
    terms = {
        "cls_train": sum(cls_train),
        "depth_train": depth_loss(train_ids),
        "cls_test": sum(cls_loss(test_id, params) for params in adapted),
        "depth_test": depth_loss([test_id]),
    }
    meta_train = terms["cls_train"] + depth_weight * terms["depth_train"]
    meta_test = terms["cls_test"] + depth_weight * terms["depth_test"]
    return MetaLosses(meta_train + meta_test_weight * meta_test, terms)


# ---------------------------------------------------------------------------
# The loop


def _validation_record(model: FasNet, data: FasData, batch_size: int) -> dict[str, float]:
    scores = torch.cat([frame_scores(model, s.val, batch_size) for s in data.sources])
    labels = torch.cat([s.val.labels.cpu() for s in data.sources])
    return {"val_auc": auroc(scores, labels == REAL), "val_eer": eer(scores, labels)[0]}


def check_meta_training(config: FasConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated or a run directory created, a network whose
    float32 training state does not fit in ``device``'s memory
    (:func:`osad.models.check_fits`)."""
    m = config.model
    settings = (
        f"model.stem_width={m.stem_width}, model.blocks={shown(m.blocks)}, "
        f"model.depth_widths={shown(m.depth_widths)}, "
        f"model.learner_widths={shown(m.learner_widths)}"
    )
    check_fits(*fas_model_spec(config), device, f"the configuration ({settings})")


def fas_data_fingerprint(data: FasData) -> str:
    """sha256 of every source domain's training and validation frames (images, labels,
    depth maps, videos): a resume must see the same data."""
    frames = [f for s in data.sources for f in (s.train, s.val)]
    return tensors_sha256([t for f in frames for t in (f.images, f.labels, f.depth, f.videos)])


def train_meta(
    config: FasConfig,
    data: FasData,
    run: RunDir | None = None,
    progress: bool = True,
    *,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train F, D and M of ``config.method`` on the source domains of ``data``.

    Every ``train.eval_every`` iterations the record of mean training losses and
    the source-validation AUC and EER goes to ``history.jsonl`` and TensorBoard
    (with ``run`` given). With ``run``, checkpoints go to ``run.checkpoints`` as
    ``config.checkpoint`` says and SIGINT/SIGTERM save one and raise
    :class:`~osad.errors.TrainingInterrupted`; ``resume_from`` (a checkpoint of
    ``run``) continues from it, or raises :class:`~osad.errors.CheckpointError` naming
    why it cannot (damaged, another configuration or data). The final model is
    returned in eval mode; the target domain is never looked at.
    """
    if resume_from is not None and run is None:
        raise InputError("resume_from needs the run directory it belongs to (run=...)")
    device = resolve_device(config.device)
    check_meta_training(config, device)
    seed_everything(config.seed)
    name, kwargs = fas_model_spec(config)
    model = create_model(name, **kwargs).to(device)
    t = config.train
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    data = data.to(device)
    generators = {
        "batches": torch.Generator().manual_seed(config.seed),
        "split": torch.Generator().manual_seed(config.seed + 1),
    }
    samplers = {
        s.name: BalancedSampler(s.train, t.batch_size, generators["batches"]) for s in data.sources
    }
    context = {}
    if run is not None:
        context = {"config": config.to_dict(), "data": fas_data_fingerprint(data)}
        context["device"] = device.type
    # The loop's "epoch" is an evaluation period: eval_every iterations (the last one
    # may be shorter) that end with a validation record.
    periods = -(-t.iterations // t.eval_every)
    state = TrainState(
        {MAIN: Network(model, optimizer, (name, kwargs))},
        generators,
        context=context,
        complete_config=lambda saved: make_fas_config(saved).to_dict(),
        schedule=Schedule(periods, t.eval_every, 1),
        samplers=samplers,
    )
    checkpoints = None
    if run is not None:
        checkpoints = CheckpointPolicy(
            run, config.checkpoint, periods, position=lambda s: f"iteration {s.step}"
        )
    if checkpoints is not None and resume_from is not None:
        checkpoints.resume(state, resume_from)
    with stop_signals(enabled=run is not None) as stop:
        log = RunLog(
            run, state.history, resumed=resume_from is not None, axis="iteration", counters=()
        )
        try:
            _iterations(config, data, state, checkpoints, stop, log, progress)
        finally:
            log.close()
    model.eval()
    result = TrainResult(model, name, kwargs)
    result.history = state.history
    return result


def _iterations(
    config: FasConfig,
    data: FasData,
    state: TrainState,
    checkpoints: CheckpointPolicy | None,
    stop: StopRequest,
    log: RunLog,
    progress: bool,
) -> None:
    """Iterate from ``state`` to ``train.iterations`` (module docstring), recording and
    checkpointing as the open-set loop does at its steps and epoch ends."""
    t, model = config.train, state.model
    method = META_METHODS[config.method]
    samplers = list(state.samplers.values())
    bar = tqdm(
        total=t.iterations,
        initial=state.step,
        desc=f"train {config.method}",
        disable=not progress,
        unit="it",
        dynamic_ncols=True,
    )
    try:
        while state.epoch <= state.schedule.epochs:
            end = min(state.epoch * t.eval_every, t.iterations)
            while state.step < end:
                model.train()
                batches = [sampler.draw() for sampler in samplers]
                split = draw_split(len(batches), state.generators["split"])
                out = meta_step(
                    model,
                    batches,
                    split,
                    method,
                    t.inner_lr,
                    t.depth_weight,
                    t.meta_test_weight,
                    t.inner_reduction,
                )
                with naming_last_good(checkpoints):
                    take_step(state.optimizer, out.loss, f"iteration {state.step + 1}")
                state.finish_step(
                    {k: v.item() for k, v in {"loss": out.loss, **out.terms}.items()}, 1, 0
                )
                if checkpoints and checkpoints.step_due(state, state.step == end):
                    checkpoints.save(state)
                bar.update(1)
                if stop.signum is not None and checkpoints is not None:
                    raise checkpoints.interrupted(stop, state)
            meter = state.meter
            record: dict[str, float] = {"iteration": state.step}
            record.update({f"train_{k}": v / meter.seen for k, v in meter.sums.items()})
            record.update(_validation_record(model, data, config.eval.batch_size))
            period = state.epoch
            state.finish_epoch(record)
            log.add(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_auc=f"{record['val_auc']:.3f}")
            if checkpoints and checkpoints.epoch_due(period):
                checkpoints.save(state)
            if stop.signum is not None and checkpoints is not None and state.step < t.iterations:
                raise checkpoints.interrupted(stop, state)
    finally:
        bar.close()
