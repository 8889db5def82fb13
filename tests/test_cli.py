"""Tests for the command line: exit codes and the printed report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import cli
from tests.data.test_check_cohort import save_nifti
from tests.data.test_manifest import ROWS, write_cohort


@pytest.fixture
def cohort(tmp_path):
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    save_nifti(tmp_path / "images/s03.nii.gz", (8, 8, 4))
    return write_cohort(tmp_path)


def run_module(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def test_module_usable_cohort_exits_zero(cohort):
    manifest_path, schema_path = cohort

    result = run_module("check-cohort", "--manifest", str(manifest_path), "--schema", str(schema_path))

    assert result.returncode == 0, result.stderr
    assert "Problems: none" in result.stdout
    assert "Usable: yes" in result.stdout
    assert "Checked cohort toy" in result.stderr


def test_module_bad_cohort_exits_one(tmp_path):
    rows = [ROWS[0].replace("images/s01.nii.gz", ""), 's02,train,2,,F,"12,5",0,A']
    manifest_path, schema_path = write_cohort(tmp_path, rows)

    result = run_module("check-cohort", "--manifest", str(manifest_path), "--schema", str(schema_path))

    assert result.returncode == 1
    assert "decimal comma" in result.stdout
    assert "Usable: no" in result.stdout


def test_module_usage_error_exits_two():
    assert run_module("check-cohort", "--manifest").returncode == 2


def test_main_prints_problem_table(tmp_path, capsys):
    rows = [*ROWS[:3], "s04,test,0,,M,130,250,B"]
    save_nifti(tmp_path / "images/s01.nii.gz", (8, 8, 4))
    manifest_path, schema_path = write_cohort(tmp_path, rows)

    code = cli.main(["check-cohort", "--manifest", str(manifest_path), "--schema", str(schema_path)])
    output = capsys.readouterr().out
    problem_lines = [line for line in output.splitlines() if line.startswith(("error", "warning"))]

    assert code == 1
    assert len(problem_lines) == 2
    assert problem_lines[0].split()[:4] == ["error", str(manifest_path), "3", "cine_path"]
    assert problem_lines[1].split()[:4] == ["warning", str(manifest_path), "4", "age"]
    assert "Extra columns ignored: site" in output
    assert "Missing rate per clinical column" in output


def test_main_missing_file_exits_two(tmp_path, capsys):
    code = cli.main(["check-cohort", "--manifest", str(tmp_path / "absent.csv"), "--schema", str(tmp_path / "s.yaml")])

    assert code == 2
    assert "--manifest" in capsys.readouterr().err


def test_main_unknown_command_exits_two():
    assert cli.main(["frobnicate"]) == 2


def test_build_cohort_passes_arguments(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_build_cohort(name, output_dir, **options):
        calls.append((name, output_dir, options))
        return output_dir / "manifest.csv"

    import pipeline.data.cohorts as cohorts

    monkeypatch.setattr(cohorts, "build_cohort", fake_build_cohort, raising=False)

    code = cli.main(["build-cohort", "toy", "--output", str(tmp_path), "--seed", "7"])

    assert calls == [("toy", tmp_path, {"seed": 7})]
    assert code == 1  # no configs/toy.yaml, so no masks can be written
    assert "toy.yaml not found, so no missingness masks were written" in capsys.readouterr().err


def test_build_cohort_unavailable(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pipeline.data.cohorts", None)

    code = cli.main(["build-cohort", "toy", "--output", str(tmp_path)])

    assert code == 1
    assert "build-cohort is not available" in capsys.readouterr().err


def test_build_cohort_limit_builds_a_slice(tmp_path):
    code = cli.main(["build-cohort", "cad_demo", "--output", str(tmp_path), "--limit", "12"])

    assert code == 0
    assert len((tmp_path / "manifest.csv").read_text().splitlines()) == 13
    assert list((tmp_path / "missingness").glob("tabular_value_gamma0.50_seed0.csv"))
