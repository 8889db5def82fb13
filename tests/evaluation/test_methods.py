"""The compared methods (discard, impute_all, dymo) on a tiny two-modality network.

The network is untrained, so these tests check which tokens and masks each method classifies with,
not how well it predicts. Each expected probability is recomputed one subject at a time with
``network.classify(network.fuse(...))``, so batching inside a method cannot hide a wrong row.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.evaluation.methods import (
    MethodOutput,
    classify_discard,
    classify_dymo,
    classify_impute_all,
    classify_positive_at_once,
)
from pipeline.selection import DyMoSelector, fit_subset_prototypes

TOLERANCE = 1e-5

# One row per subject, modalities a then b. Rows 0-2 have something observed, and rows 3 and 4
# have nothing observed. Row 0 has b partly observed, so b is both a start modality and a candidate.
START = [[True, True], [True, False], [False, True], [False, False], [False, False]]
CANDIDATES = [[False, True], [False, True], [True, False], [True, True], [True, False]]
EMPTY_ROWS = [3, 4]
OBSERVED_ROWS = [0, 1, 2]


@dataclasses.dataclass
class Setting:
    network: torch.nn.Module
    selector: DyMoSelector
    tokens: torch.Tensor
    observed_tokens: torch.Tensor
    start: torch.Tensor
    candidates: torch.Tensor
    prior: torch.Tensor


@pytest.fixture
def setting(network_factory, batch_factory) -> Setting:
    network = network_factory(embedding="cosine").eval()
    prototypes = fit_subset_prototypes(network, batch_factory(16, seed=0), min_samples_per_class=1)

    generator = torch.Generator().manual_seed(1)
    recovered = {"a": torch.randn(5, 4, generator=generator), "b": torch.randn(5, 4, generator=generator)}
    # Observed inputs differ from the recovered ones in every row, so a method that reads the
    # wrong token tensor gives different probabilities. Both are finite.
    observed = {name: value + 3.0 for name, value in recovered.items()}
    with torch.no_grad():
        tokens = network.encode(recovered)
        observed_tokens = network.encode(observed)

    return Setting(
        network=network,
        selector=DyMoSelector(network, prototypes, calibration="ratio"),
        tokens=tokens,
        observed_tokens=observed_tokens,
        start=torch.tensor(START),
        candidates=torch.tensor(CANDIDATES),
        prior=torch.tensor([0.3, 0.7], dtype=torch.float64),
    )


def probabilities_of(network, tokens: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    """Return the softmax of one subject's logits under ``mask``, fused on its own."""
    with torch.no_grad():
        logits, _ = network.classify(network.fuse(tokens[row : row + 1], mask[row : row + 1]))
    return logits.softmax(dim=-1)[0]


def mixed_tokens(setting: Setting, admitted: torch.Tensor) -> torch.Tensor:
    """Return observed tokens, with the tokens of each admitted modality taken from the recovered ones."""
    admitted_tokens = admitted[:, setting.network.token_modality][..., None]
    return torch.where(admitted_tokens, setting.tokens, setting.observed_tokens)


def assert_probabilities(output: MethodOutput) -> None:
    assert output.probabilities.shape == (len(START), 2)
    assert torch.isfinite(output.probabilities).all()
    torch.testing.assert_close(output.probabilities.sum(dim=1), torch.ones(len(START)), atol=TOLERANCE, rtol=0)


def test_discard_gives_prior_without_data(setting):
    output = classify_discard(setting.network, setting.observed_tokens, setting.start, setting.prior)

    expected = setting.prior.to(torch.float32)
    for row in EMPTY_ROWS:
        assert torch.equal(output.probabilities[row], expected)
    assert output.probabilities.dtype == setting.observed_tokens.dtype


def test_discard_classifies_observed_tokens(setting):
    output = classify_discard(setting.network, setting.observed_tokens, setting.start, setting.prior)

    for row in OBSERVED_ROWS:
        expected = probabilities_of(setting.network, setting.observed_tokens, setting.start, row)
        torch.testing.assert_close(output.probabilities[row], expected, atol=TOLERANCE, rtol=0)
    assert_probabilities(output)


def test_discard_masks(setting):
    output = classify_discard(setting.network, setting.observed_tokens, setting.start, setting.prior)

    assert torch.equal(output.used_mask, setting.start)
    assert not output.admitted_mask.any()
    assert output.admitted_mask.shape == setting.start.shape


def test_discard_all_empty_gives_prior(setting):
    start = torch.zeros(len(START), 2, dtype=torch.bool)

    output = classify_discard(setting.network, setting.observed_tokens, start, setting.prior)

    assert torch.equal(output.probabilities, setting.prior.to(torch.float32).expand(len(START), -1))


def test_impute_all_uses_start_or_candidates(setting):
    output = classify_impute_all(setting.network, setting.tokens, setting.start, setting.candidates)

    used = setting.start | setting.candidates
    assert torch.equal(output.used_mask, used)
    assert torch.equal(output.admitted_mask, setting.candidates)
    for row in range(len(START)):
        expected = probabilities_of(setting.network, setting.tokens, used, row)
        torch.testing.assert_close(output.probabilities[row], expected, atol=TOLERANCE, rtol=0)
    assert_probabilities(output)


def test_dymo_admits_only_candidates(setting):
    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)

    assert not (output.admitted_mask & ~setting.candidates).any()
    assert_probabilities(output)


def test_dymo_used_mask_with_observed_data(setting):
    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)

    rows = torch.tensor(OBSERVED_ROWS)
    expected = setting.start[rows] | output.admitted_mask[rows]
    assert torch.equal(output.used_mask[rows], expected)


def test_dymo_probabilities_follow_selection(setting):
    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)

    # A start modality that was not admitted keeps its observed tokens, but an admitted one
    # switches to its recovered tokens.
    tokens = mixed_tokens(setting, output.admitted_mask)
    for row in OBSERVED_ROWS:
        expected = probabilities_of(setting.network, tokens, output.used_mask, row)
        torch.testing.assert_close(output.probabilities[row], expected, atol=TOLERANCE, rtol=0)


def test_dymo_empty_start_uses_all_recovered(setting):
    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)
    impute_all = classify_impute_all(setting.network, setting.tokens, setting.start, setting.candidates)

    for row in EMPTY_ROWS:
        assert torch.equal(output.used_mask[row], setting.candidates[row])
        assert torch.equal(output.admitted_mask[row], setting.candidates[row])
        torch.testing.assert_close(output.probabilities[row], impute_all.probabilities[row], atol=TOLERANCE, rtol=0)


def test_dymo_empty_start_ignores_observed_tokens(setting):
    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)

    for row in EMPTY_ROWS:
        from_observed = probabilities_of(setting.network, setting.observed_tokens, setting.candidates, row)
        # The check is only meaningful when the two token sets give different predictions.
        assert not torch.allclose(from_observed, output.probabilities[row], atol=1e-3)


def test_dymo_all_empty_matches_impute_all(setting):
    start = torch.zeros(len(START), 2, dtype=torch.bool)
    candidates = torch.ones(len(START), 2, dtype=torch.bool)

    output = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, start, candidates)
    impute_all = classify_impute_all(setting.network, setting.tokens, start, candidates)

    assert torch.equal(output.used_mask, candidates)
    assert torch.equal(output.admitted_mask, candidates)
    torch.testing.assert_close(output.probabilities, impute_all.probabilities, atol=TOLERANCE, rtol=0)


def test_methods_leave_inputs_unchanged(setting):
    start, candidates = setting.start.clone(), setting.candidates.clone()
    tokens, observed_tokens = setting.tokens.clone(), setting.observed_tokens.clone()

    classify_discard(setting.network, setting.observed_tokens, setting.start, setting.prior)
    classify_impute_all(setting.network, setting.tokens, setting.start, setting.candidates)
    classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)

    assert torch.equal(setting.start, start)
    assert torch.equal(setting.candidates, candidates)
    assert torch.equal(setting.tokens, tokens)
    assert torch.equal(setting.observed_tokens, observed_tokens)


def test_method_output_is_frozen(setting):
    output = classify_impute_all(setting.network, setting.tokens, setting.start, setting.candidates)

    with pytest.raises(dataclasses.FrozenInstanceError):
        output.used_mask = setting.start


def whole_modality_setting(setting: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and candidate masks where each modality is either observed or recovered, never both."""
    start = torch.tensor([[True, False], [True, False], [False, True], [False, False], [False, False]])
    candidates = ~start
    return start, candidates


def test_positive_at_once_admits_positive_first_rewards(setting):
    start, candidates = whole_modality_setting(setting)

    output = classify_positive_at_once(setting.selector, setting.tokens, start, candidates)
    greedy = setting.selector.select_tokens(setting.tokens, start | (~start.any(dim=1, keepdim=True) & candidates), candidates & start.any(dim=1, keepdim=True))

    expected = (torch.nan_to_num(greedy.steps[0].rewards, nan=0.0) > 0) & candidates
    for row in OBSERVED_ROWS:
        assert torch.equal(output.admitted_mask[row], expected[row])
        assert torch.equal(output.used_mask[row], start[row] | expected[row])
        reference = probabilities_of(setting.network, setting.tokens, start | expected, row)
        assert torch.allclose(output.probabilities[row], reference, atol=TOLERANCE)
    for row in EMPTY_ROWS:
        assert torch.equal(output.used_mask[row], candidates[row])
    assert_probabilities(output)


def test_positive_at_once_rejects_partly_observed(setting):
    with pytest.raises(ValueError, match="both observed and a candidate"):
        classify_positive_at_once(setting.selector, setting.tokens, setting.start, setting.candidates)


def test_dymo_chunks_give_same_result(setting):
    whole = classify_dymo(setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates)
    chunked = classify_dymo(
        setting.selector, setting.tokens, setting.observed_tokens, setting.start, setting.candidates, chunk_size=2
    )

    assert torch.allclose(whole.probabilities, chunked.probabilities, atol=TOLERANCE)
    assert torch.equal(whole.used_mask, chunked.used_mask)
    assert torch.equal(whole.admitted_mask, chunked.admitted_mask)
