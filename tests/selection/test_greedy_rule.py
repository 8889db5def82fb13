"""Hand-worked cases for the greedy rule and the reward terms."""

import math

import pytest
import torch

from pipeline.selection import calibration_factor, greedy_step, modality_reward

NAN = float("nan")


def step(rewards, remaining, active, zero_reward="keep"):
    return greedy_step(
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(remaining, dtype=torch.bool),
        torch.tensor(active, dtype=torch.bool),
        zero_reward,
    )


def test_admits_arg_max_and_prunes_negative():
    admitted, remaining, active = step([[NAN, 0.2, -0.1, 0.5]], [[False, True, True, True]], [True])

    assert admitted.tolist() == [3]
    assert remaining.tolist() == [[False, True, False, False]]
    assert active.tolist() == [True]


def test_stops_when_all_rewards_non_positive():
    admitted, remaining, active = step([[NAN, 0.0, -0.3]], [[False, True, True]], [True])

    assert admitted.tolist() == [-1]
    assert active.tolist() == [False]
    assert remaining.tolist() == [[False, True, False]]


def test_tie_goes_to_lowest_index():
    admitted, remaining, _ = step([[0.4, NAN, 0.4, 0.4]], [[True, False, True, True]], [True])

    assert admitted.tolist() == [0]
    assert remaining.tolist() == [[False, False, True, True]]


def test_one_admission_per_step_even_when_all_positive():
    admitted, remaining, active = step([[0.1, 0.3, 0.2]], [[True, True, True]], [True])

    assert admitted.tolist() == [1]
    assert remaining.sum().item() == 2
    assert active.tolist() == [True]


def test_zero_reward_kept_by_default():
    _, remaining, active = step([[0.0, 0.3, NAN]], [[True, True, False]], [True])

    assert remaining.tolist() == [[True, False, False]]
    assert active.tolist() == [True]


def test_zero_reward_dropped_on_request():
    _, remaining, active = step([[0.0, 0.3, NAN]], [[True, True, False]], [True], zero_reward="drop")

    assert remaining.tolist() == [[False, False, False]]
    assert active.tolist() == [False]


def test_last_candidate_admitted_ends_selection():
    admitted, remaining, active = step([[NAN, 0.7]], [[False, True]], [True])

    assert admitted.tolist() == [1]
    assert not remaining.any()
    assert active.tolist() == [False]


def test_inactive_samples_untouched():
    admitted, remaining, active = step([[0.9, 0.9], [0.9, -1.0]], [[True, True], [True, True]], [False, True])

    assert admitted.tolist() == [-1, 0]
    assert remaining.tolist() == [[True, True], [False, False]]
    assert active.tolist() == [False, False]


def test_rewards_outside_remaining_are_ignored():
    admitted, _, _ = step([[5.0, 0.1]], [[False, True]], [True])

    assert admitted.tolist() == [1]


def test_unknown_zero_reward_rule():
    with pytest.raises(ValueError, match="zero_reward must be one of .* got 'ignore'"):
        step([[0.1]], [[True]], [True], zero_reward="ignore")


def run_greedy(reward_of, num_modalities, present, zero_reward="keep"):
    """Drive greedy_step with a scripted reward ``reward_of(current_set, candidate)`` for one sample."""
    remaining = torch.tensor([[j not in present for j in range(num_modalities)]])
    active = remaining.any(dim=-1)
    current = set(present)
    order = []
    while bool(active.any()):
        rewards = torch.full((1, num_modalities), NAN, dtype=torch.float64)
        for j in range(num_modalities):
            if remaining[0, j]:
                rewards[0, j] = reward_of(frozenset(current), j)
        admitted, remaining, active = greedy_step(rewards, remaining, active, zero_reward)
        if admitted.item() >= 0:
            current.add(admitted.item())
            order.append(admitted.item())
    return order


def test_scripted_three_steps():
    # Step 1: 1 -> +0.3, 2 -> +0.1, 3 -> -0.2 (dropped). Step 2: 2 -> +0.05. Step 3: nothing left.
    table = {
        (frozenset({0}), 1): 0.3,
        (frozenset({0}), 2): 0.1,
        (frozenset({0}), 3): -0.2,
        (frozenset({0, 1}), 2): 0.05,
        (frozenset({0, 1}), 3): 1.0,  # never asked: 3 was dropped in step 1
    }

    order = run_greedy(lambda current, j: table[(current, j)], 4, {0})

    assert order == [1, 2]


def test_scripted_zero_candidate_returns_later():
    # Step 1 gives 2 a zero reward; it is kept and becomes positive once 1 is admitted.
    table = {(frozenset({0}), 1): 0.2, (frozenset({0}), 2): 0.0, (frozenset({0, 1}), 2): 0.4}

    kept = run_greedy(lambda current, j: table[(current, j)], 3, {0}, zero_reward="keep")
    dropped = run_greedy(lambda current, j: table[(current, j)], 3, {0}, zero_reward="drop")

    assert kept == [1, 2]
    assert dropped == [1]


@pytest.mark.parametrize(
    "rule, ics, ics_candidate, expected",
    [
        ("ratio", 0.8, 0.9, 1.0),
        ("ratio", 0.8, 0.8, 1.0),
        ("ratio", 0.8, 0.2, 0.25),
        ("ratio", 0.5, 0.0, 0.0),
        ("ratio", 0.0, 0.0, 1.0),
        ("log_ratio", 0.8, 0.9, 1.0),
        ("log_ratio", 0.5, 0.25, 0.5),
        ("log_ratio", math.exp(-1.0), math.exp(-4.0), 0.25),
        ("log_ratio", 0.5, 0.0, 0.0),
        ("log_ratio", 1.0, 0.5, 0.0),
        ("none", 0.9, 0.1, 1.0),
    ],
)
def test_calibration_factor_values(rule, ics, ics_candidate, expected):
    alpha = calibration_factor(
        torch.tensor([ics], dtype=torch.float64), torch.tensor([ics_candidate], dtype=torch.float64), rule
    )

    assert alpha.item() == pytest.approx(expected, abs=1e-12)
    assert torch.isfinite(alpha).all()


def test_calibration_rejects_unknown_rule():
    with pytest.raises(ValueError, match="calibration rule must be one of .* got 'sqrt'"):
        calibration_factor(torch.ones(1), torch.ones(1), "sqrt")


def test_reward_is_calibrated_gain():
    reward = modality_reward(
        quality_current=torch.tensor([0.6, 0.6]),
        ics_current=torch.tensor([0.8, 0.8]),
        quality_candidate=torch.tensor([0.9, 0.9]),
        ics_candidate=torch.tensor([0.4, 0.9]),
        rule="ratio",
    )

    torch.testing.assert_close(reward, torch.tensor([0.5 * 0.9 - 0.6, 0.9 - 0.6]))
