"""The attacked evaluation shared out among 2 Gloo processes equals the single-process one."""

import torch

from osad.config import make_config
from osad.eval import evaluate
from osad.train.loop import build_model_for
from tests.conftest import TINY, one_torch_thread
from tests.distributed.spawn import run_ranks

# Batches of 64 over 540 test images: 9 batches, ranks take 5 and 4. Reconstruction
# needs the attacked images (keep_images), ODIN runs the model on them.
OVERRIDES = [
    *TINY,
    "eval.batch_size=64",
    "eval.scores=[msp,openmax,reconstruction,odin]",
]


def _evaluate_in_rank(rank: int, model, data, config, expected) -> None:
    result = evaluate(model, data, config, progress=False)
    for got, want in zip(result.conditions, expected.conditions, strict=True):
        assert got.name == want.name
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        torch.testing.assert_close(got.features, want.features, rtol=0, atol=0)
        for name in want.scores:
            torch.testing.assert_close(got.scores[name], want.scores[name], rtol=0, atol=0)
        assert got.closed_set_accuracy == want.closed_set_accuracy
        assert got.auroc == want.auroc
        assert got.scorer_fit == want.scorer_fit


def test_two_process_evaluation_equals_one_process(digits_split0):
    config = make_config(overrides=OVERRIDES)
    model = build_model_for(config, digits_split0)[0].eval()
    with one_torch_thread():
        expected = evaluate(model, digits_split0, config, progress=False)
    assert [c.name for c in expected.conditions] == ["clean", "fgsm", "pgd"]
    run_ranks(_evaluate_in_rank, 2, model, digits_split0, config, expected)
