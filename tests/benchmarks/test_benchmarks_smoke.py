"""Smoke runs of the speed benchmarks with ``--quick``: they finish, agree and print the expected lines.

No timing is asserted, because a quick run on tiny batches does not measure speed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re

import pytest

from benchmarks import selection_speed, training_speed
from benchmarks.published_loop import published_loop_select

NUM_MODALITIES = {"cad": 2, "digits": 5}
SUMMARY_LINE = re.compile(r"selection_vs_forward=\d+\.\d{3} reference_vs_selection=\d+\.\d{3}")


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("selection") / "selection.csv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = selection_speed.main(["--quick", "--output", str(output)])
    return results, printed.getvalue().splitlines(), output


def test_selection_covers_every_case(selection_run):
    results, _, _ = selection_run

    cases = [(result.configuration, result.candidates) for result in results]
    assert cases == [("cad", "1"), ("digits", "1"), ("digits", "2"), ("digits", "3"), ("digits", "4"), ("digits", "eta=0.8")]


def test_selection_matches_published_loop(selection_run):
    results, _, _ = selection_run

    for result in results:
        assert result.mismatched_samples == 0, result
        assert result.max_logit_difference <= selection_speed.LOGIT_TOLERANCE, result


def test_selection_call_counts(selection_run):
    results, _, _ = selection_run

    for result in results:
        modalities = NUM_MODALITIES[result.configuration]
        assert result.encoder_calls_forward == modalities
        assert result.encoder_calls_selector == modalities
        assert result.fusion_calls_forward == 1
        assert result.fusion_calls_selector == max(1, result.steps_selector)
        # Every full pass of the published structure runs every encoder.
        assert result.encoder_calls_reference == modalities * result.fusion_calls_reference
        assert result.fusion_calls_reference <= 2 * modalities * result.steps_reference + 1
        assert result.steps_selector == result.steps_reference


def test_selection_last_line_format(selection_run):
    _, lines, _ = selection_run

    assert SUMMARY_LINE.fullmatch(lines[-1]), lines[-1]


def test_selection_csv_has_every_case(selection_run):
    results, _, output = selection_run

    with output.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results)
    assert rows[0]["threads"] == "1"
    assert {row["agrees"] for row in rows} == {"True"}


def test_published_loop_rejects_unknown_calibration():
    with pytest.raises(ValueError, match="calibration"):
        published_loop_select(None, None, {}, None, calibration="unknown")  # type: ignore[arg-type]


def test_training_quick_run():
    results = training_speed.main(["--quick"])

    assert [result.configuration for result in results] == ["cad", "digits"]
    for result in results:
        modalities = NUM_MODALITIES[result.configuration]
        assert result.encoder_calls_per_batch_encode_once == modalities
        assert result.encoder_calls_per_batch_reencode == modalities * result.subsets_per_batch
        assert result.encode_once_samples_per_second > 0
        assert result.reencode_samples_per_second > 0
