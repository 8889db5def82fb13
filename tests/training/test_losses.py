"""Tests for the subset cross-entropy and the prototype loss, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.losses import SubsetPrototypeLoss, prototype_similarity

LOGITS = np.array([[2.0, -1.0], [0.5, 0.5], [-0.3, 1.2]])
EMBEDDINGS = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
PROTOTYPES = np.array([[0.8, 0.6], [-0.2, -0.9]])
LABELS = np.array([0, 1, 1])


def numpy_cross_entropy(scores: np.ndarray, labels: np.ndarray) -> float:
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


def numpy_similarity(embedding: str) -> np.ndarray:
    if embedding == "cosine":
        return EMBEDDINGS @ PROTOTYPES.T
    difference = EMBEDDINGS[:, None, :] - PROTOTYPES[None, :, :]
    return -(difference**2).sum(axis=-1)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64)


@pytest.mark.parametrize("embedding", ["cosine", "euclidean"])
def test_prototype_similarity_matches_numpy(embedding):
    similarity = prototype_similarity(as_tensor(EMBEDDINGS), as_tensor(PROTOTYPES), embedding)

    np.testing.assert_allclose(similarity.numpy(), numpy_similarity(embedding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("embedding", ["cosine", "euclidean"])
def test_loss_matches_numpy(embedding):
    loss = SubsetPrototypeLoss(embedding, prototype_weight=0.7, temperature=0.1, warmup_epochs=3)

    terms = loss(as_tensor(LOGITS), as_tensor(EMBEDDINGS), torch.tensor(LABELS), as_tensor(PROTOTYPES), epoch=3)

    classification = numpy_cross_entropy(LOGITS, LABELS)
    prototype = numpy_cross_entropy(numpy_similarity(embedding) / 0.1, LABELS)
    assert terms.classification.item() == pytest.approx(classification, rel=1e-10)
    assert terms.prototype.item() == pytest.approx(prototype, rel=1e-10)
    assert terms.total.item() == pytest.approx(classification + 0.7 * prototype, rel=1e-10)


def test_prototype_term_off_before_warmup():
    loss = SubsetPrototypeLoss("cosine", prototype_weight=1.0, warmup_epochs=3)
    inputs = (as_tensor(LOGITS), as_tensor(EMBEDDINGS), torch.tensor(LABELS), as_tensor(PROTOTYPES))

    before = loss(*inputs, epoch=2)
    at_warmup = loss(*inputs, epoch=3)

    assert not loss.prototype_active(2)
    assert loss.prototype_active(3)
    assert before.total.item() == before.classification.item()
    assert before.prototype.item() > 0
    assert at_warmup.total.item() == pytest.approx(at_warmup.classification.item() + at_warmup.prototype.item())


def test_prototype_term_off_has_no_gradient():
    loss = SubsetPrototypeLoss("euclidean", warmup_epochs=1)
    logits = as_tensor(LOGITS).requires_grad_()
    embeddings = as_tensor(EMBEDDINGS).requires_grad_()

    loss(logits, embeddings, torch.tensor(LABELS), as_tensor(PROTOTYPES), epoch=0).total.backward()

    assert logits.grad is not None

    assert embeddings.grad is None


def test_valid_mask_averages_valid_pairs():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64)  # (A, B, K)
    embeddings = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64)  # (A, B, P)
    labels = torch.tensor([0, 1, 1])  # (B,), broadcast over the draws
    valid = torch.tensor([[True, True, True], [True, False, False]])
    loss = SubsetPrototypeLoss("euclidean", warmup_epochs=0)

    terms = loss(logits, embeddings, labels, as_tensor(PROTOTYPES), epoch=0, valid=valid)

    kept_labels = labels.expand(2, 3)[valid].numpy()
    expected_classification = numpy_cross_entropy(logits[valid].numpy(), kept_labels)
    assert terms.classification.item() == pytest.approx(expected_classification, rel=1e-10)
    flat = loss(logits[valid], embeddings[valid], torch.tensor(kept_labels), as_tensor(PROTOTYPES), epoch=0)
    assert terms.prototype.item() == pytest.approx(flat.prototype.item(), rel=1e-10)


def test_all_invalid_pairs_are_rejected():
    loss = SubsetPrototypeLoss("cosine")
    valid = torch.zeros(3, dtype=torch.bool)

    with pytest.raises(ValueError, match="valid"):
        loss(as_tensor(LOGITS), as_tensor(EMBEDDINGS), torch.tensor(LABELS), as_tensor(PROTOTYPES), 0, valid)


def test_embedding_shape_mismatch_is_rejected():
    loss = SubsetPrototypeLoss("cosine")

    with pytest.raises(ValueError, match="embeddings"):
        loss(as_tensor(LOGITS), as_tensor(EMBEDDINGS[:2]), torch.tensor(LABELS), as_tensor(PROTOTYPES), 0)


def test_non_broadcasting_labels_are_rejected():
    loss = SubsetPrototypeLoss("cosine")

    with pytest.raises(ValueError, match="broadcast"):
        loss(as_tensor(LOGITS), as_tensor(EMBEDDINGS), torch.tensor([0, 1]), as_tensor(PROTOTYPES), 0)


def test_prototype_class_count_mismatch_is_rejected():
    loss = SubsetPrototypeLoss("cosine")

    with pytest.raises(ValueError, match="prototypes"):
        loss(as_tensor(LOGITS), as_tensor(EMBEDDINGS), torch.tensor(LABELS), as_tensor(PROTOTYPES[:1]), 0)


def test_prototype_width_mismatch_is_rejected():
    with pytest.raises(ValueError, match="prototypes"):
        prototype_similarity(as_tensor(EMBEDDINGS), torch.zeros(2, 3, dtype=torch.float64), "cosine")


@pytest.mark.parametrize(
    ("arguments", "error", "pattern"),
    [
        ({"embedding": "manhattan"}, ValueError, "embedding"),
        ({"embedding": "cosine", "prototype_weight": -1.0}, ValueError, "prototype_weight"),
        ({"embedding": "cosine", "temperature": 0.0}, ValueError, "temperature"),
        ({"embedding": "cosine", "warmup_epochs": -1}, ValueError, "warmup_epochs"),
        ({"embedding": "cosine", "warmup_epochs": 1.0}, TypeError, "warmup_epochs"),
        ({"embedding": "cosine", "prototype_weight": "1"}, TypeError, "prototype_weight must be an int or float"),
        ({"embedding": "cosine", "prototype_weight": float("inf")}, ValueError, "prototype_weight must be a finite"),
        ({"embedding": "cosine", "temperature": "0.1"}, TypeError, "temperature must be an int or float, got str"),
        ({"embedding": "cosine", "temperature": float("nan")}, ValueError, "temperature must be a finite number > 0"),
    ],
)
def test_invalid_loss_arguments_are_rejected(arguments, error, pattern):
    with pytest.raises(error, match=pattern):
        SubsetPrototypeLoss(**arguments)
