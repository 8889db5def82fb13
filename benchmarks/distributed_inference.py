"""Wall time of the CAD inference bundle in one process against ``torchrun`` with N processes.

Run from the repository root, on an otherwise idle machine:

    .venv/bin/python benchmarks/distributed_inference.py                  # 1 vs 2 processes, 3 runs each
    .venv/bin/python benchmarks/distributed_inference.py --processes 1 4  # on a machine with 4 GPUs

Each configuration runs ``python -m monai.bundle run`` with the layered configs
``inference.json`` + ``multi_gpu_inference.json`` on the default cohort (which must be built
already: run ``inference.json`` once) and the committed trained files. One process runs without
torchrun. N > 1 processes run under ``torchrun --nproc_per_node=N`` on a free port. The runs
alternate (1, N, 1, N, ...), after one untimed warm-up run of each that fills the image cache.
The table gives the median wall time of the whole command, start-up included, and the load
average before the first run.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
LAYERED_CONFIGS = "['bundles/cad/inference.json','bundles/cad/multi_gpu_inference.json']"

logger = logging.getLogger("benchmarks.distributed_inference")


def free_port() -> int:
    """Return a TCP port of the loopback interface that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bundle_command(processes: int, output_dir: Path) -> list[str]:
    """Return the command that runs the inference bundle in ``processes`` processes."""
    bundle = ["-m", "monai.bundle", "run", "--config_file", LAYERED_CONFIGS, "--output_dir", str(output_dir), "--run_name", "benchmark"]
    if processes == 1:
        return [sys.executable, *bundle]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, f"--nproc_per_node={processes}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *bundle]


def timed_run(processes: int, output_dir: Path) -> float:
    """Run the bundle once; return its wall time in seconds."""
    environment = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "WORLD_SIZE")}
    started = time.perf_counter()
    completed = subprocess.run(bundle_command(processes, output_dir), cwd=REPOSITORY, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the bundle run with {processes} processes failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return seconds


def main(arguments: list[str] | None = None) -> dict[int, list[float]]:
    """Time every configuration; return the wall times (s) per number of processes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="numbers of processes to compare")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per number of processes")
    options = parser.parse_args(arguments)
    if not (REPOSITORY / "cohorts" / "cad_demo" / "manifest.csv").is_file():
        raise FileNotFoundError("cohorts/cad_demo is not built; run `python -m monai.bundle run --config_file bundles/cad/inference.json` once.")

    times: dict[int, list[float]] = {count: [] for count in options.processes}
    with tempfile.TemporaryDirectory(prefix="distributed_inference_") as folder:
        for count in options.processes:
            timed_run(count, Path(folder) / f"warm_up_{count}")
        load = os.getloadavg()[0]
        for repeat in range(options.repeats):
            for count in options.processes:
                seconds = timed_run(count, Path(folder) / f"run_{count}_{repeat}")
                times[count].append(seconds)
                logger.info("%d processes, run %d: %.1f s", count, repeat + 1, seconds)

    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}, cores {os.cpu_count()}, load average before the timed runs {load:.2f}")
    print("processes  median_s  runs_s")
    for count, values in times.items():
        print(f"{count:>9}  {statistics.median(values):8.1f}  {' '.join(f'{value:.1f}' for value in values)}")
    return times


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
