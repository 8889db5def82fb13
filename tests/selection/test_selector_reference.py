"""Check the fast DyMo selector against a straightforward per-sample reference implementation.

The reference below is written from the method's definition alone and shares no code with
``pipeline.selection``. Every evaluation runs the full network, encoders included, on one sample.
The quality, intra-class similarity (ICS), calibration and greedy rule are computed with plain
Python and numpy. Subsets are looked up from frozensets of modality indices through the
documented encoding, in which subset index ``s`` is the modality set whose bits spell ``s + 1``.

Networks are tiny, random and float64, so rounding noise (about 1e-15) stays far below the reward
gaps that decide a greedy step. The exception is a reward that is exactly 0 in exact arithmetic,
which :func:`test_candidate_without_effect_never_admitted` covers. Shape letters: ``B`` batch, ``M`` modalities, ``K`` classes,
``P`` embedding width, ``F`` input features per modality.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline.networks.fusion import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, SelectionResult, SubsetPrototypes, fit_subset_prototypes

NUM_CLASSES = 3
NUM_FEATURES = 6
TAU = 0.1
TRAINING_SAMPLES = 48
TEST_SAMPLES = 16

# The selector batches samples and candidates differently from the per-sample reference, so the
# two agree only up to rounding. In float64 that is about 1e-15.
REWARD_TOLERANCE = 1e-9
LOGIT_TOLERANCE = 1e-9

SEEDS = (0, 1, 2)
MODALITY_COUNTS = (2, 5)
EMBEDDINGS = ("cosine", "euclidean")
CALIBRATIONS = ("ratio", "log_ratio", "none")


# ---------------------------------------------------------------------------------------------
# Problem set-up: a random network, class-structured inputs and prototypes fitted by the library.
# ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A random float64 network with prototypes fitted by the library and one test batch.

    Attributes:
        network: the network, in eval mode.
        prototypes: prototypes fitted with :func:`fit_subset_prototypes` on complete training data.
        class_means: ``(M, K, F)`` mean input of each class in each modality.
        training: the training batch the prototypes were fitted on.
        inputs: per modality name, the test inputs ``(B, F)``.
        present_mask: ``(B, M)`` bool, at least one present modality per sample.
    """

    network: MaskedFusionTransformer
    prototypes: SubsetPrototypes
    class_means: torch.Tensor
    training: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    present_mask: torch.Tensor


def build_network(num_modalities: int, embedding: str, seed: int) -> MaskedFusionTransformer:
    torch.manual_seed(seed)
    modalities = [
        {"name": f"modality{j}", "encoder": "features", "in_features": NUM_FEATURES, "num_tokens": 2, "out_features": 8}
        for j in range(num_modalities)
    ]
    network = MaskedFusionTransformer(
        modalities, num_classes=NUM_CLASSES, dim=16, depth=2, heads=2, projection_dim=8, embedding=embedding
    )
    return network.double().eval()


def class_structured_inputs(
    class_means: torch.Tensor, labels: torch.Tensor, agreement: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Draw one input ``(B, F)`` per modality around the mean of the sample's class.

    With probability ``1 - agreement`` a modality is drawn around another random class, and the
    noise scale varies per sample, so a recovered modality may help or hurt the prediction.
    """
    num_modalities = class_means.shape[0]
    batch_size = labels.shape[0]
    inputs = []
    for modality in range(num_modalities):
        agrees = torch.rand(batch_size, generator=generator) < agreement
        other = torch.randint(NUM_CLASSES, (batch_size,), generator=generator)
        source = torch.where(agrees, labels, other)
        noise_scale = 0.3 + 1.5 * torch.rand(batch_size, 1, generator=generator, dtype=torch.float64)
        noise = torch.randn(batch_size, NUM_FEATURES, generator=generator, dtype=torch.float64)
        inputs.append(class_means[modality, source] + noise_scale * noise)
    return inputs


def random_present_mask(batch_size: int, num_modalities: int, generator: torch.Generator) -> torch.Tensor:
    """Draw a presence mask ``(B, M)`` with each modality present with probability 0.3, at least one per row."""
    present = torch.rand(batch_size, num_modalities, generator=generator) < 0.3
    forced = torch.randint(num_modalities, (batch_size,), generator=generator)
    present[torch.arange(batch_size), forced] = True
    return present


@functools.lru_cache(maxsize=None)
def cached_problem(num_modalities: int, embedding: str, seed: int) -> Problem:
    """Build the problem once per configuration. Tests that change the network build their own."""
    return make_problem(num_modalities, embedding, seed)


def make_problem(num_modalities: int, embedding: str, seed: int) -> Problem:
    network = build_network(num_modalities, embedding, seed)
    names = network.modality_names
    generator = torch.Generator().manual_seed(1000 + seed)

    # Random inputs with random labels give every class the same prototype, so the quality would be
    # close to 1 / K for every mask and every reward close to 0. Inputs drawn around a separate
    # mean per class and modality give distinct prototypes and rewards of both signs.
    class_means = 1.5 * torch.randn(num_modalities, NUM_CLASSES, NUM_FEATURES, generator=generator, dtype=torch.float64)

    training_labels = torch.arange(TRAINING_SAMPLES) % NUM_CLASSES
    training_inputs = class_structured_inputs(class_means, training_labels, agreement=0.9, generator=generator)
    training = {name: value for name, value in zip(names, training_inputs)}
    training["present"] = torch.ones(TRAINING_SAMPLES, num_modalities, dtype=torch.bool)
    training["label"] = training_labels
    prototypes = fit_subset_prototypes(network, [training])
    assert bool(prototypes.fitted.all()), "every subset must be fitted for the tests below"

    test_labels = torch.randint(NUM_CLASSES, (TEST_SAMPLES,), generator=generator)
    test_inputs = class_structured_inputs(class_means, test_labels, agreement=0.5, generator=generator)
    return Problem(
        network=network,
        prototypes=prototypes,
        class_means=class_means,
        training=training,
        inputs={name: value for name, value in zip(names, test_inputs)},
        present_mask=random_present_mask(TEST_SAMPLES, num_modalities, generator),
    )


def sample_inputs(inputs: dict[str, torch.Tensor], sample: int) -> dict[str, torch.Tensor]:
    """Cut the inputs of one sample out of a batch, keeping a batch dimension of 1."""
    return {name: value[sample : sample + 1] for name, value in inputs.items()}


def select_rows(inputs: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: value[rows] for name, value in inputs.items()}


# ---------------------------------------------------------------------------------------------
# Reference implementation, one sample at a time.
# ---------------------------------------------------------------------------------------------


def subset_index(modalities: frozenset[int]) -> int:
    """Subset index of a non-empty modality set: the set's bits spell ``index + 1``."""
    return sum(1 << modality for modality in modalities) - 1


@dataclass
class ReferencePrototypes:
    """Prototype arrays as numpy: ``centers (S, K, P)``, ``sigmas (S, K)``, ``overall (K, P)``."""

    centers: np.ndarray
    sigmas: np.ndarray
    overall: np.ndarray
    kind: str

    @classmethod
    def from_library(cls, prototypes: SubsetPrototypes) -> ReferencePrototypes:
        return cls(
            centers=prototypes.centers.double().numpy(),
            sigmas=prototypes.sigmas.double().numpy(),
            overall=prototypes.overall.double().numpy(),
            kind=prototypes.embedding,
        )


def reference_forward(
    network: MaskedFusionTransformer, inputs: dict[str, torch.Tensor], modalities: frozenset[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Run the full network, encoders included, on one sample under one modality set and return logits and embedding."""
    mask = torch.tensor([[j in modalities for j in range(network.num_modalities)]])
    with torch.no_grad():
        logits, embedding = network(inputs, mask)
    return logits[0].numpy(), embedding[0].numpy()


def reference_distance(embedding: np.ndarray, center: np.ndarray, kind: str) -> float:
    if kind == "cosine":
        return float(1.0 - embedding @ center)
    return float(np.linalg.norm(embedding - center))


def reference_quality(embedding: np.ndarray, prototypes: ReferencePrototypes, tau: float) -> float:
    """``max_k softmax_k(sim(e, overall_k) / tau)`` with sim the dot product or minus the squared distance."""
    if prototypes.kind == "cosine":
        scores = prototypes.overall @ embedding / tau
    else:
        scores = -((prototypes.overall - embedding) ** 2).sum(axis=1) / tau
    return float(1.0 / np.exp(scores - scores.max()).sum())


def reference_ics(
    logits: np.ndarray, embedding: np.ndarray, modalities: frozenset[int], prototypes: ReferencePrototypes
) -> float:
    """``erfc(d / (sigma * sqrt(2)))`` for the predicted class's prototype under the sample's subset."""
    row = subset_index(modalities)
    predicted = int(np.argmax(logits))
    distance = reference_distance(embedding, prototypes.centers[row, predicted], prototypes.kind)
    sigma = float(prototypes.sigmas[row, predicted])
    if distance == 0.0:
        return 1.0
    return math.erfc(distance / (sigma * math.sqrt(2.0)))


def reference_calibration(ics: float, ics_candidate: float, rule: str) -> float:
    if rule == "none" or ics_candidate >= ics:
        return 1.0
    if rule == "ratio":
        return ics_candidate / ics
    if ics_candidate == 0.0:  # ln(ICS) / ln(0) tends to 0
        return 0.0
    return math.log(ics) / math.log(ics_candidate)


@dataclass
class ReferenceSelection:
    """Reference result for one sample: the final modality set, the admission order, the logits
    of the final set and the rewards ``{modality: reward}`` evaluated in each step."""

    modalities: frozenset[int]
    admitted: list[int]
    logits: np.ndarray
    step_rewards: list[dict[int, float]]


def reference_select_sample(
    network: MaskedFusionTransformer,
    prototypes: ReferencePrototypes,
    recovered: dict[str, torch.Tensor],
    present: frozenset[int],
    candidates: frozenset[int],
    calibration: str,
    zero_reward: str = "keep",
    observed: dict[str, torch.Tensor] | None = None,
    tau: float = TAU,
) -> ReferenceSelection:
    """Greedy selection for one sample, with inputs of batch size 1.

    A modality uses its recovered input once admitted or while it is the candidate under
    evaluation, and otherwise its observed input where ``observed`` has one. A present modality
    that is also a candidate (partly observed) therefore switches input on admission while the
    modality set stays the same.
    """
    names = network.modality_names
    observed = observed or {}

    def evaluate(modalities: frozenset[int], admitted: frozenset[int]) -> tuple[np.ndarray, float, float]:
        inputs = {
            name: recovered[name] if (j in admitted or name not in observed) else observed[name]
            for j, name in enumerate(names)
        }
        logits, embedding = reference_forward(network, inputs, modalities)
        return logits, reference_quality(embedding, prototypes, tau), reference_ics(logits, embedding, modalities, prototypes)

    def reward(modalities: frozenset[int], admitted: frozenset[int], candidate: int) -> float:
        _, quality, ics = evaluate(modalities, admitted)
        _, quality_candidate, ics_candidate = evaluate(modalities | {candidate}, admitted | {candidate})
        return reference_calibration(ics, ics_candidate, calibration) * quality_candidate - quality

    modalities = frozenset(present)
    remaining = sorted(candidates)
    order: list[int] = []
    step_rewards: list[dict[int, float]] = []
    while remaining:
        rewards = {candidate: reward(modalities, frozenset(order), candidate) for candidate in remaining}
        step_rewards.append(rewards)

        if zero_reward == "keep":
            dropped = {candidate for candidate, value in rewards.items() if value < 0}
        else:
            dropped = {candidate for candidate, value in rewards.items() if value <= 0}
        best = max(rewards.values())
        if best <= 0:
            break

        chosen = min(candidate for candidate, value in rewards.items() if value == best)
        order.append(chosen)
        modalities = modalities | {chosen}
        remaining = [candidate for candidate in remaining if candidate not in dropped and candidate != chosen]

    logits, _, _ = evaluate(modalities, frozenset(order))
    return ReferenceSelection(modalities=modalities, admitted=order, logits=logits, step_rewards=step_rewards)


def reference_select_batch(
    problem: Problem,
    calibration: str,
    zero_reward: str = "keep",
    inputs: dict[str, torch.Tensor] | None = None,
    present_mask: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    observed_inputs: dict[str, torch.Tensor] | None = None,
) -> list[ReferenceSelection]:
    inputs = problem.inputs if inputs is None else inputs
    present_mask = problem.present_mask if present_mask is None else present_mask
    candidate_mask = ~present_mask if candidate_mask is None else candidate_mask
    prototypes = ReferencePrototypes.from_library(problem.prototypes)

    selections = []
    for sample in range(present_mask.shape[0]):
        selections.append(
            reference_select_sample(
                problem.network,
                prototypes,
                sample_inputs(inputs, sample),
                frozenset(present_mask[sample].nonzero().flatten().tolist()),
                frozenset(candidate_mask[sample].nonzero().flatten().tolist()),
                calibration,
                zero_reward,
                observed=None if observed_inputs is None else sample_inputs(observed_inputs, sample),
            )
        )
    return selections


def reference_fit_prototypes(
    network: MaskedFusionTransformer, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> ReferencePrototypes:
    """Fit prototypes on complete training data: per subset and class the mean embedding and the
    root mean square distance to it, and the mean of the centers over subsets."""
    num_modalities = network.num_modalities
    num_subsets = 2**num_modalities - 1
    centers = np.zeros((num_subsets, NUM_CLASSES, network.config["projection_dim"]))
    sigmas = np.zeros((num_subsets, NUM_CLASSES))
    labels_array = labels.numpy()

    for size in range(1, num_modalities + 1):
        for members in itertools.combinations(range(num_modalities), size):
            modalities = frozenset(members)
            mask = torch.tensor([[j in modalities for j in range(num_modalities)]]).expand(labels.shape[0], -1)
            with torch.no_grad():
                _, embedding = network(inputs, mask)
            embedding = embedding.numpy()

            row = subset_index(modalities)
            for label in range(NUM_CLASSES):
                members_of_class = embedding[labels_array == label]
                center = members_of_class.mean(axis=0)
                distances = [reference_distance(vector, center, network.embedding) for vector in members_of_class]
                centers[row, label] = center
                sigmas[row, label] = math.sqrt(float(np.mean(np.square(distances))))

    return ReferencePrototypes(centers=centers, sigmas=sigmas, overall=centers.mean(axis=0), kind=network.embedding)


# ---------------------------------------------------------------------------------------------
# Comparison helpers.
# ---------------------------------------------------------------------------------------------


def final_modalities(mask: torch.Tensor) -> list[frozenset[int]]:
    return [frozenset(row.nonzero().flatten().tolist()) for row in mask]


def assert_matches_reference(result: SelectionResult, references: list[ReferenceSelection]) -> None:
    """Assert that a :class:`SelectionResult` agrees with the per-sample reference selections."""
    assert final_modalities(result.present_mask) == [reference.modalities for reference in references]
    assert result.admission_order() == [reference.admitted for reference in references]

    expected_logits = np.stack([reference.logits for reference in references])
    np.testing.assert_allclose(result.logits.numpy(), expected_logits, rtol=0, atol=LOGIT_TOLERANCE)

    for sample, reference in enumerate(references):
        assert len(reference.step_rewards) <= len(result.steps), f"sample {sample}: too few steps"
        for number, step in enumerate(result.steps):
            row = step.rewards[sample]
            evaluated = set((~row.isnan()).nonzero().flatten().tolist())
            expected = reference.step_rewards[number] if number < len(reference.step_rewards) else {}
            assert evaluated == set(expected), f"sample {sample}, step {number + 1}: evaluated candidates differ"
            for modality, value in expected.items():
                assert float(row[modality]) == pytest.approx(value, abs=REWARD_TOLERANCE), (
                    f"sample {sample}, step {number + 1}, modality {modality}: reward differs"
                )


def counted(function: Callable, counter: list[int]) -> Callable:
    """Wrap ``function`` so that each call appends the batch size of its first argument to ``counter``."""

    def wrapper(*args, **kwargs):
        counter.append(int(args[0].shape[0]))
        return function(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_modalities", MODALITY_COUNTS)
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_prototypes_match_reference_fit(num_modalities, embedding):
    problem = cached_problem(num_modalities, embedding, seed=0)
    library = problem.prototypes
    training_inputs = {name: problem.training[name] for name in problem.network.modality_names}
    reference = reference_fit_prototypes(problem.network, training_inputs, problem.training["label"])

    expected_subsets = [
        [bool((index + 1) >> j & 1) for j in range(num_modalities)] for index in range(2**num_modalities - 1)
    ]
    assert library.subsets.tolist() == expected_subsets
    np.testing.assert_allclose(library.centers.numpy(), reference.centers, rtol=0, atol=1e-12)
    np.testing.assert_allclose(library.sigmas.numpy(), reference.sigmas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(library.overall.numpy(), reference.overall, rtol=0, atol=1e-12)


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("num_modalities", MODALITY_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_selector_matches_reference(seed, num_modalities, embedding, calibration):
    problem = cached_problem(num_modalities, embedding, seed)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration=calibration, tau=TAU)

    result = selector(problem.inputs, problem.present_mask)

    assert_matches_reference(result, reference_select_batch(problem, calibration))


@pytest.mark.parametrize("zero_reward", ("keep", "drop"))
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_zero_reward_rules_match_reference(embedding, zero_reward):
    problem = cached_problem(5, embedding, seed=0)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration="none", zero_reward=zero_reward)

    result = selector(problem.inputs, problem.present_mask)

    assert_matches_reference(result, reference_select_batch(problem, "none", zero_reward=zero_reward))


def admission_counts() -> dict[str, int]:
    """Count the samples of all equivalence cases that admit 0, 1 and 2 or more modalities, for 5 modalities."""
    counts = {"0": 0, "1": 0, "2+": 0}
    for seed, embedding, calibration in itertools.product(SEEDS, EMBEDDINGS, CALIBRATIONS):
        problem = cached_problem(5, embedding, seed)
        result = DyMoSelector(problem.network, problem.prototypes, calibration=calibration)(
            problem.inputs, problem.present_mask
        )
        for sample, order in enumerate(result.admission_order()):
            if not bool(result.candidate_mask[sample].any()):
                continue
            if len(order) >= 2:
                counts["2+"] += 1
            else:
                counts[str(len(order))] += 1
    return counts


def test_equivalence_cases_exercise_admissions():
    counts = admission_counts()

    assert counts["0"] > 0, counts
    assert counts["1"] > 0, counts
    assert counts["2+"] > 0, counts


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_selection_independent_of_batch(embedding):
    problem = cached_problem(5, embedding, seed=1)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration="ratio")
    batch = selector(problem.inputs, problem.present_mask)

    for sample in range(TEST_SAMPLES):
        alone = selector(sample_inputs(problem.inputs, sample), problem.present_mask[sample : sample + 1])
        assert torch.equal(alone.present_mask[0], batch.present_mask[sample])
        assert alone.admission_order()[0] == batch.admission_order()[sample]
        torch.testing.assert_close(alone.logits[0], batch.logits[sample], rtol=0, atol=1e-6)

    permutation = torch.randperm(TEST_SAMPLES, generator=torch.Generator().manual_seed(7))
    shuffled = selector(select_rows(problem.inputs, permutation), problem.present_mask[permutation])
    assert torch.equal(shuffled.present_mask, batch.present_mask[permutation])
    assert shuffled.admission_order() == [batch.admission_order()[index] for index in permutation.tolist()]
    torch.testing.assert_close(shuffled.logits, batch.logits[permutation], rtol=0, atol=1e-6)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_unused_modality_content_ignored(embedding):
    problem = cached_problem(5, embedding, seed=2)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration="log_ratio")

    # Modality 4 is neither present nor a candidate, so no evaluated mask contains it.
    present_mask = problem.present_mask.clone()
    present_mask[:, 4] = False
    present_mask[~present_mask.any(dim=-1), 0] = True
    candidate_mask = ~present_mask
    candidate_mask[:, 4] = False
    before = selector(problem.inputs, present_mask, candidate_mask)

    changed = dict(problem.inputs)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(TEST_SAMPLES, NUM_FEATURES, generator=generator, dtype=torch.float64)
    changed["modality4"] = problem.inputs["modality4"] + 10.0 * noise
    after = selector(changed, present_mask, candidate_mask)

    assert torch.equal(after.present_mask, before.present_mask)
    assert after.admission_order() == before.admission_order()
    assert torch.equal(after.logits, before.logits)
    assert len(after.steps) == len(before.steps)
    for step_before, step_after in zip(before.steps, after.steps):
        assert torch.equal(step_after.rewards.nan_to_num(), step_before.rewards.nan_to_num())


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_rejected_candidate_content_ignored(embedding):
    problem = cached_problem(5, embedding, seed=2)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration="log_ratio")
    result = selector(problem.inputs, problem.present_mask)

    # With default candidates, every modality outside the final mask is a rejected candidate. Its
    # new content changes its reward and may change the selection, so the test changes one
    # rejected candidate per sample and compares the samples whose final mask stayed the same.
    unused = ~result.present_mask
    assert bool(unused.any()), "some sample must reject a candidate"
    generator = torch.Generator().manual_seed(3)
    changed = {name: value.clone() for name, value in problem.inputs.items()}
    rejected = {}
    for sample in range(TEST_SAMPLES):
        options = unused[sample].nonzero().flatten().tolist()
        if options:
            modality = options[int(torch.randint(len(options), (1,), generator=generator))]
            name = problem.network.modality_names[modality]
            changed[name][sample] += 3.0 * torch.randn(NUM_FEATURES, generator=generator, dtype=torch.float64)
            rejected[sample] = modality
    after = selector(changed, problem.present_mask)

    unchanged_selection = [
        sample for sample in rejected if torch.equal(after.present_mask[sample], result.present_mask[sample])
    ]
    assert len(unchanged_selection) >= len(rejected) // 2, (len(unchanged_selection), len(rejected))
    for sample in unchanged_selection:
        assert after.admission_order()[sample] == result.admission_order()[sample]
        torch.testing.assert_close(after.logits[sample], result.logits[sample], rtol=0, atol=1e-12)
        evaluated = any(not bool(step.rewards[sample, rejected[sample]].isnan()) for step in after.steps)
        assert evaluated, f"sample {sample}: the rejected candidate was never evaluated"


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_encoder_and_fusion_call_counts(embedding, monkeypatch):
    problem = make_problem(5, embedding, seed=0)
    network = problem.network
    selector = DyMoSelector(network, problem.prototypes, calibration="ratio")

    encoder_calls = {index: [] for index in range(network.num_modalities)}
    for index, encoder in enumerate(network.encoders):
        monkeypatch.setattr(encoder, "forward", counted(encoder.forward, encoder_calls[index]))
    fusion_rows: list[int] = []
    monkeypatch.setattr(network, "fuse", counted(network.fuse, fusion_rows))

    result = selector(problem.inputs, problem.present_mask)

    assert {index: len(calls) for index, calls in encoder_calls.items()} == {index: 1 for index in encoder_calls}
    assert len(result.steps) >= 2, "the batch must need several steps for this check to mean something"
    # One call fuses the start masks with the first step's candidates, then one call per later step.
    assert len(fusion_rows) == len(result.steps), fusion_rows
    assert all(rows > 0 for rows in fusion_rows), fusion_rows


def test_fusion_calls_without_candidates(monkeypatch):
    problem = make_problem(2, "cosine", seed=0)
    network = problem.network
    selector = DyMoSelector(network, problem.prototypes, calibration="ratio")
    fusion_rows: list[int] = []
    monkeypatch.setattr(network, "fuse", counted(network.fuse, fusion_rows))

    result = selector(problem.inputs, torch.ones(TEST_SAMPLES, 2, dtype=torch.bool))

    assert result.steps == []
    assert fusion_rows == [TEST_SAMPLES]


def partly_observed_case(problem: Problem) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Make modality 1 present everywhere and partly observed on the first half of the batch.

    Returns the presence mask, the candidate mask and the observed inputs. On the first half the
    observed input of modality 1 is drawn around a random class and its recovered input (the
    problem's test input) is a candidate. On the second half modality 1 is fully observed, so its
    observed and recovered inputs are the same and it is no candidate.
    """
    half = TEST_SAMPLES // 2
    generator = torch.Generator().manual_seed(11)
    present_mask = problem.present_mask.clone()
    present_mask[:, 1] = True
    candidate_mask = ~present_mask
    candidate_mask[:half, 1] = True

    observed_labels = torch.randint(NUM_CLASSES, (TEST_SAMPLES,), generator=generator)
    observed = class_structured_inputs(problem.class_means, observed_labels, agreement=1.0, generator=generator)[1]
    observed[half:] = problem.inputs["modality1"][half:]
    return present_mask, candidate_mask, {"modality1": observed}


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_partly_observed_matches_reference(embedding, calibration):
    problem = cached_problem(5, embedding, seed=0)
    present_mask, candidate_mask, observed_inputs = partly_observed_case(problem)
    selector = DyMoSelector(problem.network, problem.prototypes, calibration=calibration)

    result = selector(problem.inputs, present_mask, candidate_mask, observed_inputs)

    references = reference_select_batch(
        problem, calibration, present_mask=present_mask, candidate_mask=candidate_mask, observed_inputs=observed_inputs
    )
    assert_matches_reference(result, references)

    # Admitting the partly observed modality switches its input but leaves the subset unchanged.
    assert bool(result.present_mask[:, 1].all())
    switched = result.admitted_mask[:, 1]
    assert not bool(switched[TEST_SAMPLES // 2 :].any())
    for sample, modalities in enumerate(final_modalities(result.present_mask)):
        inputs = sample_inputs(problem.inputs, sample)
        if not bool(switched[sample]):
            inputs["modality1"] = observed_inputs["modality1"][sample : sample + 1]
        logits, _ = reference_forward(problem.network, inputs, modalities)
        np.testing.assert_allclose(result.logits[sample].numpy(), logits, rtol=0, atol=LOGIT_TOLERANCE)


def test_partly_observed_cases_switch_and_keep():
    """Across the partly observed cases, some samples switch to the recovered input and some keep the observed one."""
    switched = 0
    kept = 0
    for embedding, calibration in itertools.product(EMBEDDINGS, CALIBRATIONS):
        problem = cached_problem(5, embedding, seed=0)
        present_mask, candidate_mask, observed_inputs = partly_observed_case(problem)
        selector = DyMoSelector(problem.network, problem.prototypes, calibration=calibration)

        result = selector(problem.inputs, present_mask, candidate_mask, observed_inputs)

        admitted = result.admitted_mask[: TEST_SAMPLES // 2, 1]
        switched += int(admitted.sum())
        kept += int((~admitted).sum())

    assert switched > 0
    assert kept > 0


@pytest.mark.parametrize("zero_reward", ("keep", "drop"))
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_candidate_without_effect_never_admitted(embedding, zero_reward):
    """A partly observed modality whose observed and recovered inputs are equal changes no output.

    Its reward is therefore exactly 0 in every step, so it must never be admitted. Rule ``"drop"``
    removes it after the first step, and rule ``"keep"`` evaluates it again in every later step.

    The selector fuses the current masks in the same call as the candidates, so the reward is
    exactly 0 rather than rounding noise of either sign.
    """
    problem = cached_problem(5, embedding, seed=0)
    present_mask = problem.present_mask.clone()
    present_mask[:, 4] = True
    candidate_mask = ~present_mask
    candidate_mask[:, 4] = True
    observed_inputs = {"modality4": problem.inputs["modality4"].clone()}
    selector = DyMoSelector(problem.network, problem.prototypes, calibration="none", zero_reward=zero_reward)

    result = selector(problem.inputs, present_mask, candidate_mask, observed_inputs)

    assert not bool(result.admitted_mask[:, 4].any()), result.admission_order()
    references = reference_select_batch(
        problem, "none", zero_reward, present_mask=present_mask, candidate_mask=candidate_mask, observed_inputs=observed_inputs
    )
    assert_matches_reference(result, references)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_candidate_without_effect_never_admitted_float32(embedding):
    """The same check in float32, where rounding noise between fusion calls is about 1e-7."""
    problem = cached_problem(5, embedding, seed=0)
    network = copy.deepcopy(problem.network).float()
    training = {key: value.float() if value.is_floating_point() else value for key, value in problem.training.items()}
    prototypes = fit_subset_prototypes(network, [training])
    inputs = {name: value.float() for name, value in problem.inputs.items()}
    present_mask = problem.present_mask.clone()
    present_mask[:, 4] = True
    candidate_mask = ~present_mask
    candidate_mask[:, 4] = True
    selector = DyMoSelector(network, prototypes, calibration="none", zero_reward="keep")

    result = selector(inputs, present_mask, candidate_mask, {"modality4": inputs["modality4"].clone()})

    assert len(result.steps) >= 2
    assert not bool(result.admitted_mask[:, 4].any()), result.admission_order()
