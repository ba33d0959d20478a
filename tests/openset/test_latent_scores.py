import numpy as np
import pytest
import torch

from osad.errors import ConfigError, FitError
from osad.eval import auroc
from osad.openset import KNN, Mahalanobis


def _latent(n_per_class=50, k=3, dim=6, seed=0):
    """Gaussian class clusters with a shared anisotropic covariance and one dead unit."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    centres = torch.zeros(k, dim, dtype=torch.float64)
    centres[torch.arange(k), torch.arange(k)] = 6.0
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.3, 0.0], dtype=torch.float64)[:dim]
    noise = torch.randn(len(labels), dim, generator=g, dtype=torch.float64) * scale
    return centres[labels] + noise, labels


def test_mahalanobis_matches_hand_computation_with_a_singular_covariance():
    z, labels = _latent()
    test = torch.tensor(
        [[6.0, 0.0, 0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 1.0, -1.0, 0.2, 0.0]], dtype=torch.float64
    )
    scorer = Mahalanobis().fit(torch.zeros(len(z), 3), z, labels)
    zn, yn = z.numpy(), labels.numpy()
    means = np.stack([zn[yn == c].mean(0) for c in range(3)])
    centred = zn - means[yn]
    precision = np.linalg.pinv(centred.T @ centred / len(zn), rcond=1e-6, hermitian=True)
    expected = [min((t - m) @ precision @ (t - m) for m in means) for t in test.numpy()]
    assert np.allclose(scorer.score(None, test).numpy(), expected, rtol=1e-9)


def test_mahalanobis_uses_the_tied_covariance_not_euclidean_distance():
    z, labels = _latent()
    scorer = Mahalanobis().fit(None, z, labels)
    mean0 = z[labels == 0].mean(0)
    along_wide = mean0 + torch.tensor([0, 0, 4.0, 0, 0, 0], dtype=torch.float64)  # std 2
    along_narrow = mean0 + torch.tensor([0, 0, 0, 0, 1.0, 0], dtype=torch.float64)  # std 0.3
    wide, narrow = scorer.score(None, torch.stack([along_wide, along_narrow]))
    assert narrow > wide  # 1 narrow step is more surprising than 4 wide ones


def test_latent_scores_rank_planted_unknowns_higher_and_are_differentiable():
    z, labels = _latent()
    known, _ = _latent(seed=1)
    g = torch.Generator().manual_seed(2)
    unknown = torch.randn(60, 6, generator=g, dtype=torch.float64) + 3.0  # between the classes
    unknown[:, 5] = 0.0
    test = torch.cat([known, unknown]).requires_grad_(True)
    is_unknown = torch.cat([torch.zeros(len(known)), torch.ones(len(unknown))]).bool()
    for scorer in (Mahalanobis(), KNN(k=5)):
        scores = scorer.fit(None, z, labels).score(None, test)
        assert auroc(scores.detach(), is_unknown) > 0.95, scorer.name
        (grad,) = torch.autograd.grad(scores.sum(), test)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_knn_is_the_distance_to_the_kth_nearest_normalised_training_feature():
    z, labels = _latent(n_per_class=10)
    test = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    bank = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    queries = test.numpy() / np.linalg.norm(test.numpy(), axis=1, keepdims=True)
    distances = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    for k in (1, 4, 30):
        expected = np.sort(distances, axis=1)[:, k - 1]
        scorer = KNN(k=k, chunk_size=3).fit(None, z, labels)
        assert np.allclose(scorer.score(None, test).numpy(), expected, atol=1e-7)
        float32 = KNN(k=k).fit(None, z.float(), labels).score(None, test.float())
        assert np.allclose(float32.numpy(), expected, atol=1e-3)


def test_knn_caps_k_at_the_number_of_training_features():
    z, labels = _latent(n_per_class=4)  # 12 training features < default k = 50
    scorer = KNN().fit(None, z, labels)
    assert scorer.k == 50 and scorer.effective_k == 12
    test = torch.randn(5, 6, dtype=torch.float64)
    farthest = KNN(k=12).fit(None, z, labels).score(None, test)
    assert torch.allclose(scorer.score(None, test), farthest)


def test_knn_refuses_bad_k_and_latent_scores_need_features():
    with pytest.raises(ConfigError, match="'k'"):
        KNN(k=0)
    with pytest.raises(ValueError, match="latent features"):
        KNN().fit(torch.zeros(3, 2), None, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="latent features"):
        Mahalanobis().fit(None, *_latent()).score(torch.zeros(1, 3))
    with pytest.raises(RuntimeError, match="before fit"):
        Mahalanobis().score(None, torch.zeros(1, 6))


def test_mahalanobis_without_images_of_a_class_is_a_fit_error():
    features, labels = torch.randn(4, 3), torch.tensor([0, 0, 2, 2])
    with pytest.raises(FitError, match=r"no training image of classes \[1\]"):
        Mahalanobis().fit(torch.randn(4, 3), features, labels)
