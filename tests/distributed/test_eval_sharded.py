"""The attacked evaluation shared out among 2 Gloo processes equals the single-process one,
for classifier and adaptive (per-score) attacks and every pairing."""

import pytest
import torch

from osad.config import make_config
from osad.eval import evaluate
from osad.train import build_model_for
from tests.conftest import TINY, one_torch_thread
from tests.distributed.spawn import run_ranks

# Batches of 64 over 540 test images: 9 batches, ranks take 5 and 4. Reconstruction
# needs the attacked images (keep_images), ODIN runs the model on them; the adaptive
# condition attacks each score separately (its own objective through the same sharding).
OVERRIDES = [
    *TINY,
    "eval.batch_size=64",
    "eval.scores=[msp,openmax,reconstruction,odin]",
    "eval.pairings=[both,known,unknown]",
    "eval.attacks.adaptive={name: pgd, eps: 32, steps: 2, target: score}",
]


def _evaluate_in_rank(rank: int, model, data, config, expected) -> None:
    result = evaluate(model, data, config, progress=False)
    for got, want in zip(result.conditions, expected.conditions, strict=True):
        assert got.name == want.name
        assert got.pairings.keys() == want.pairings.keys()
        for pairing, wanted in want.pairings.items():
            have = got.pairings[pairing]
            for name in wanted.scores:
                torch.testing.assert_close(have.logits[name], wanted.logits[name], rtol=0, atol=0)
                torch.testing.assert_close(have.scores[name], wanted.scores[name], rtol=0, atol=0)
            assert have.metrics == wanted.metrics
        assert got.scorer_fit == want.scorer_fit
        assert got.nonfinite_gradients == want.nonfinite_gradients


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(digits_split0):
    config = make_config(overrides=OVERRIDES)
    model = build_model_for(config, digits_split0)[0].eval()
    with one_torch_thread():
        expected = evaluate(model, digits_split0, config, progress=False)
    assert [c.name for c in expected.conditions] == ["clean", "fgsm", "pgd", "adaptive"]
    assert list(expected.conditions[-1].pairings) == ["both", "known", "unknown"]
    run_ranks(_evaluate_in_rank, 2, model, digits_split0, config, expected)
