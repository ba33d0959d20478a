import pytest
import torch

from osad.attacks.outputs import Outputs
from osad.config import make_config
from osad.data import to_float
from osad.eval import evaluate
from osad.eval.protocol import score_outputs
from osad.openset import ODIN, SCORERS
from osad.train import build_model_for
from tests.conftest import TINY


@pytest.mark.slow
def test_evaluate_scores_with_every_registered_score(digits_split0):
    # wiring only: an untrained OSDN without denoisers, one FGSM condition, one fit
    config = make_config(
        overrides=[
            *TINY,
            "model.denoise_places=[]",
            "eval.openmax_fit=clean",
            f"eval.scores=[{','.join(SCORERS)}]",
            "eval.attacks={fgsm: {name: fgsm, eps: 32, alpha: 32, steps: 1, random_start: false}}",
        ]
    )
    model = build_model_for(config, digits_split0)[0].eval()
    result = evaluate(model, digits_split0, config, progress=False)
    n = len(digits_split0.test_labels)
    for condition in result.conditions:
        assert set(condition.scores) == set(SCORERS)
        for name, scores in condition.scores.items():
            assert scores.shape == (n,) and torch.isfinite(scores).all(), name
            assert 0.0 <= condition.auroc[name] <= 1.0
    assert set(result.conditions[0].scorer_fit) == {"openmax", "openmax-bb"}
    # scores that run the model see the attacked images, not the clean ones
    clean, fgsm = (c.scores["reconstruction"] for c in result.conditions)
    assert not torch.allclose(clean, fgsm)


def test_score_outputs_batches_equal_one_pass(plain_model, digits_split0):
    x = to_float(digits_split0.test_images[:50])
    with torch.no_grad():
        logits, z = plain_model.forward_features(x)
    odin = ODIN(plain_model)
    whole = score_outputs(odin, plain_model, Outputs(logits, z, x), batch_size=50)
    batched = score_outputs(odin, plain_model, Outputs(logits, z, x), batch_size=7)
    assert torch.allclose(whole, batched, atol=1e-6)
