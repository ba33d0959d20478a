"""The OSAD test protocol (Shao et al., ECCV 2020, section 4).

For every condition (``clean`` and each attack of ``eval.attacks``):

* known test images are attacked with their true label, unknown test images
  with the label the model predicts for the clean image (they have none);
* closed-set accuracy is measured on the attacked known images;
* each open-set scorer is fitted on the training images (for OpenMax: the
  logits of the correctly classified training images, attacked under the same
  condition with their true labels, no augmentation) and scores the attacked
  test images (scores that run the model, such as ODIN, see the attacked
  images themselves); AUROC takes unknown images as positives.

Attacks are seeded per batch, so the same model and seed give the same numbers,
also when ``torchrun`` shares the batches among several processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osad.attacks import build_attack, eval_mode, model_outputs
from osad.config import AttackConfig, Config
from osad.data import OpenSetData, to_float
from osad.distributed import derive_seed, is_main, map_batches
from osad.eval.metrics import auroc, closed_set_accuracy
from osad.openset import OpenMax, Scorer, make_scorer, scorer_options
from osad.perf import autocast


@dataclass
class Outputs:
    logits: Tensor
    features: Tensor | None
    images: Tensor | None = None  # the (attacked) inputs, kept only when asked for


@dataclass
class ConditionResult:
    name: str
    attack: dict[str, Any] | None
    logits: Tensor
    features: Tensor | None
    scores: dict[str, Tensor]
    closed_set_accuracy: float
    auroc: dict[str, float]
    scorer_fit: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    conditions: list[ConditionResult]
    test_labels: Tensor  # remapped known label, -1 for unknown
    test_classes: Tensor  # original class id


def outputs_under_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    attack_config: AttackConfig | None,
    *,
    batch_size: int,
    seed: int,
    desc: str = "",
    progress: bool = False,
    keep_images: bool = False,
) -> Outputs:
    """Model outputs on ``images``, each first attacked with ``labels`` (or, where a
    label is -1 or ``labels`` is None, with the model's prediction on the clean image).
    ``keep_images`` also returns the attacked images (float, in [0, 1]).

    Under torchrun the batches are shared out among the ranks and the outputs
    gathered on every rank (:func:`osad.distributed.map_batches`). The attack's
    random source restarts for each batch from ``derive_seed(seed, batch index)``,
    so the outputs are the same whatever the number of processes.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    attack = (
        build_attack(model, attack_config, generator=generator)
        if attack_config is not None
        else None
    )

    def run_batch(index: int, batch: slice) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = to_float(images[batch])
        if attack is not None:
            generator.manual_seed(derive_seed(seed, index))
            with torch.no_grad():
                predicted = model(x).argmax(1)
            y = predicted if labels is None else labels[batch]
            y = torch.where(y >= 0, y, predicted)
            x = attack(x, y)
        with torch.no_grad():
            logits, features = model_outputs(model, x)
        # Scorers, metrics and scores.h5 work in fp32 whatever precision the model ran in.
        features = None if features is None else features.float()
        return logits.float(), features, x if keep_images else None

    with eval_mode(model):
        logits, features, inputs = map_batches(
            run_batch, len(images), batch_size, device, desc=desc, progress=progress
        )
    return Outputs(logits, features, inputs)


def make_scorers(config: Config, model: nn.Module) -> dict[str, Scorer]:
    """The scorers of ``eval.scores``, unfitted; both OpenMax variants use ``eval.openmax_tail``."""
    scorers: dict[str, Scorer] = {}
    for name in config.eval.scores:
        options = {}
        if "tail_size" in scorer_options(name):
            options["tail_size"] = config.eval.openmax_tail
        scorers[name] = make_scorer(name, model=model, **options)
    return scorers


def score_outputs(scorer: Scorer, model: nn.Module, outputs: Outputs, batch_size: int) -> Tensor:
    """``scorer`` on ``outputs`` in batches (scores that run the model cost memory), on CPU;
    under torchrun the batches are shared out among the ranks."""

    def score_batch(index: int, batch: slice) -> tuple[Tensor]:
        features = None if outputs.features is None else outputs.features[batch]
        images = None if outputs.images is None else outputs.images[batch]
        with torch.no_grad():
            return (scorer.score(outputs.logits[batch], features, images),)

    with eval_mode(model):
        (scores,) = map_batches(score_batch, len(outputs.logits), batch_size, outputs.logits.device)
    return scores.cpu()


def _scorer_fit_report(scorer: Scorer) -> dict[str, Any]:
    if isinstance(scorer, OpenMax):  # both variants
        return {
            "correct_per_class": [f.correct for f in scorer.class_fits],
            "tail_per_class": [f.tail for f in scorer.class_fits],
            "classes_fitted_on_all_images": [
                i for i, f in enumerate(scorer.class_fits) if f.used_misclassified
            ],
        }
    return {}


def evaluate(
    model: nn.Module, data: OpenSetData, config: Config, progress: bool = True
) -> EvalResult:
    """Run the test protocol of ``config.eval`` on ``data`` (moved to the model's device).

    Forward passes run under ``config.perf``'s autocast; the model-side switches
    (channels_last, compile) are the caller's, see :func:`osad.perf.prepare_model`.
    """
    device = next(model.parameters()).device
    data = data.to(device)
    bs = config.eval.batch_size
    conditions: list[tuple[str, AttackConfig | None]] = [("clean", None)]
    conditions += list(config.eval.attacks.items())
    is_known = data.test_known
    scorers = make_scorers(config, model)  # refuses a bad score before any attack runs
    keep_images = any(scorer.needs_images for scorer in scorers.values())
    clean_train: Outputs | None = None
    results = []

    def attacked_outputs(
        images: Tensor,
        labels: Tensor,
        attack: AttackConfig | None,
        seed: int,
        desc: str,
        keep_images: bool = False,
    ) -> Outputs:
        # Autocast covers the model only: scorers keep fp32.
        with autocast(config.perf, device):
            return outputs_under_attack(
                model,
                images,
                labels,
                attack,
                batch_size=bs,
                seed=seed,
                desc=desc,
                progress=progress,
                keep_images=keep_images,
            )

    for name, attack_config in tqdm(
        conditions, desc="evaluate", disable=not (progress and is_main()), dynamic_ncols=True
    ):
        test = attacked_outputs(
            data.test_images,
            data.test_labels,
            attack_config,
            config.seed,
            f"{name} test",
            keep_images=keep_images,
        )
        fit_config = attack_config if config.eval.openmax_fit == "attacked" else None
        if fit_config is None and clean_train is not None:
            train_out = clean_train
        else:
            train_out = attacked_outputs(
                data.train_images, data.train_labels, fit_config, config.seed + 1, f"{name} fit"
            )
            if fit_config is None:
                clean_train = train_out
        scores, aurocs, fits = {}, {}, {}
        for score_name, scorer in scorers.items():
            scorer.fit(train_out.logits, train_out.features, data.train_labels)
            scores[score_name] = score_outputs(scorer, model, test, bs)
            aurocs[score_name] = auroc(scores[score_name], ~is_known.cpu())
            report = _scorer_fit_report(scorer)
            if report:
                fits[score_name] = report
        results.append(
            ConditionResult(
                name=name,
                attack=None if attack_config is None else asdict(attack_config.resolved()),
                logits=test.logits.cpu(),
                features=None if test.features is None else test.features.cpu(),
                scores=scores,
                closed_set_accuracy=closed_set_accuracy(
                    test.logits[is_known], data.test_labels[is_known]
                ),
                auroc=aurocs,
                scorer_fit=fits,
            )
        )
    return EvalResult(results, data.test_labels.cpu(), data.test_classes.cpu())
