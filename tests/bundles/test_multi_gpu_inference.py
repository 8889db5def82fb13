"""The CAD inference bundle under torchrun: two CPU processes (gloo) against one process.

On the test split of a 60-subject slice of cad_demo, with the committed trained files, the
layered configs ``inference.json`` + ``multi_gpu_inference.json`` run once in one process and
once under ``torchrun --nproc_per_node=2``. The distributed run must write a byte-identical
``results.csv`` and ``subjects.csv`` and one MLflow run with the same metrics.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.workflows.cohort_data import Exclusion
from pipeline.workflows.inference import _merge_shards, _raise_on_failure, _ShardRecords

REPOSITORY = Path(__file__).resolve().parents[2]
LAYERED_CONFIGS = "['bundles/cad/inference.json','bundles/cad/multi_gpu_inference.json']"
TORCHRUN = Path(sys.executable).with_name("torchrun")

# The test split of the slice has 12 subjects: batches of 3 make 4 blocks, 2 per process.
SWEEP_OPTIONS = (
    "--gammas", json.dumps([0.0, 0.5, 1.0]),
    "--methods", json.dumps(["discard", "impute_all", "dymo_cosine", "dymo_euclidean"]),
    "--n_bootstrap", "50",
    "--batch_size", "3",
    "--device", "cpu",
    "--run_name", "distributed-test",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_command(command: list[str], expect_success: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "WORLD_SIZE")}
    # One thread per process in both runs, as torchrun sets for several processes.
    environment["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=timeout)
    if expect_success:
        assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed


def single_process(*options: str, **kwargs) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "monai.bundle", "run", "--config_file", LAYERED_CONFIGS, *options], **kwargs)


def two_processes(*options: str, **kwargs) -> subprocess.CompletedProcess:
    torchrun = [
        str(TORCHRUN), "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
    ]
    return run_command([*torchrun, "-m", "monai.bundle", "run", "--config_file", LAYERED_CONFIGS, *options], **kwargs)


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> tuple[Path, Path]:
    outputs = tmp_path_factory.mktemp("runs")
    one_process_output, two_process_output = outputs / "one_process", outputs / "two_processes"
    single_process("--dataset_dir", str(cohort), "--output_dir", str(one_process_output), *SWEEP_OPTIONS)
    two_processes("--dataset_dir", str(cohort), "--output_dir", str(two_process_output), *SWEEP_OPTIONS)
    return one_process_output, two_process_output


def only_run(output: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("cad_dymo")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def metric_histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    names = [name for name in run.data.metrics if name != "seconds"]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)) for name in names}


def test_two_processes_write_identical_results(runs):
    one_process_output, two_process_output = runs

    assert (two_process_output / "results.csv").read_bytes() == (one_process_output / "results.csv").read_bytes()
    assert (two_process_output / "subjects.csv").read_bytes() == (one_process_output / "subjects.csv").read_bytes()
    assert (two_process_output / "excluded_subjects.csv").read_bytes() == (one_process_output / "excluded_subjects.csv").read_bytes()


def test_two_processes_evaluate_every_subject(runs, cohort):
    _, two_process_output = runs

    subjects = pd.read_csv(two_process_output / "subjects.csv")
    manifest = pd.read_csv(cohort / "manifest.csv")
    test_ids = manifest.loc[manifest["split"] == "test", "subject_id"].tolist()
    first_block = subjects[(subjects["gamma"] == 0.0) & (subjects["method"] == "discard")]
    assert len(test_ids) == 12
    assert first_block["subject_id"].tolist() == test_ids
    assert len(subjects) == 12 * 4 * 3


def test_two_processes_log_one_mlflow_run(runs):
    one_process_output, two_process_output = runs

    client_one, run_one = only_run(one_process_output)
    client_two, run_two = only_run(two_process_output)
    assert run_two.info.status == "FINISHED"
    assert run_two.info.run_name == "distributed-test"
    assert run_two.data.params["processes"] == "2"
    assert run_one.data.params["processes"] == "1"
    assert run_two.data.params["subjects"] == run_one.data.params["subjects"] == "12"
    histories = metric_histories(client_two, run_two)
    assert len(histories) == 8
    assert histories == metric_histories(client_one, run_one)


def test_two_processes_fail_together(cohort, tmp_path):
    completed = two_processes(
        "--dataset_dir", str(cohort), "--output_dir", str(tmp_path / "eval"), "--models_dir", str(tmp_path / "no_models"),
        *SWEEP_OPTIONS, expect_success=False, timeout=120,
    )

    assert completed.returncode != 0
    logged = completed.stdout + completed.stderr
    assert logged.count("The inference job failed: FileNotFoundError") == 2
    assert not (tmp_path / "eval" / "results.csv").exists()


def shard_records(rank: int, blocks: list[int], subjects: list[list[str]], error: str | None = None) -> _ShardRecords:
    """Build records of two methods at one gamma for the given blocks of subject ids."""
    records = [
        [pd.DataFrame({"subject_id": ids * 2, "method": ["discard"] * len(ids) + ["dymo_cosine"] * len(ids)})]
        for ids in subjects
    ]
    exclusions = [[Exclusion(f"left-{block}", "test", "cine", "unreadable")] for block in blocks]
    return _ShardRecords(rank, blocks, records, exclusions, error=error)


def test_merge_restores_manifest_order():
    shards = [
        shard_records(0, [0, 2], [["s0", "s1"], ["s4"]]),
        shard_records(1, [1], [["s2", "s3"]]),
    ]

    (records,), exclusions = _merge_shards(shards, gamma_count=1, methods=["discard", "dymo_cosine"])

    assert records["subject_id"].tolist() == ["s0", "s1", "s2", "s3", "s4"] * 2
    assert records["method"].tolist() == ["discard"] * 5 + ["dymo_cosine"] * 5
    assert [exclusion.subject_id for exclusion in exclusions] == ["left-0", "left-1", "left-2"]


def test_merge_rejects_empty_split():
    shards = [_ShardRecords(0, [0], [[]], [[Exclusion("s0", "test", "cine", "unreadable")]]), _ShardRecords(1, [], [], [])]

    with pytest.raises(ValueError, match="no subject of the split was evaluated"):
        _merge_shards(shards, gamma_count=1, methods=["discard"])


def test_failure_of_other_rank_raises():
    shards = [shard_records(0, [0], [["s0"]]), shard_records(1, [], [], error="SubjectDataError: cine.nii.gz is truncated")]

    with pytest.raises(RuntimeError, match="rank 1 of 2 failed with SubjectDataError: cine.nii.gz is truncated"):
        _raise_on_failure(shards, None)


def test_own_failure_is_raised_unchanged():
    failure = FileNotFoundError("no trained network")

    with pytest.raises(FileNotFoundError) as raised:
        _raise_on_failure([shard_records(0, [], [], error="FileNotFoundError: no trained network")], failure)

    assert raised.value is failure


def test_torchrun_without_multi_process_config_is_rejected(cohort, tmp_path):
    torchrun = [str(TORCHRUN), "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    completed = run_command(
        [*torchrun, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/inference.json",
         "--dataset_dir", str(cohort), "--output_dir", str(tmp_path / "eval"), *SWEEP_OPTIONS],
        expect_success=False,
    )

    assert completed.returncode != 0
    assert "the process group is not initialised" in completed.stdout + completed.stderr
    assert "multi_gpu_inference.json" in completed.stdout + completed.stderr
    assert not (tmp_path / "eval" / "mlruns.db").exists()
