"""Split the time of one DyMo selection call into its network stages and the selection code around them.

Wraps :meth:`~pipeline.networks.MaskedFusionTransformer.encode`, ``fuse`` and ``classify`` with
timers, runs :class:`~pipeline.selection.DyMoSelector` and a plain forward pass in turn, and
prints the median time per stage, the rows each stage processed, and the rest (reward, greedy
rule, indexing). Networks are untrained and inputs random, as in :mod:`benchmarks.selection_speed`.

Run from the repository root::

    .venv/bin/python -m benchmarks.selection_breakdown --configuration digits --batch-size 64 --candidates eta
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.configurations import (
    CONFIGURATIONS,
    exact_missing_mask,
    make_batch,
    random_missing_mask,
)
from benchmarks.selection_speed import ETA
from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, fit_subset_prototypes

STAGES = ("encode", "fuse", "classify")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configuration", choices=sorted(CONFIGURATIONS), default="digits", help="network (default digits)")
    parser.add_argument("--batch-size", type=int, default=64, help="subjects per batch (default 64)")
    parser.add_argument(
        "--candidates",
        default="eta",
        help=f"missing modalities per subject: a number from 1 to M - 1, or 'eta' for eta = {ETA} (default eta)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each method (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and masks (default 0)")
    return parser.parse_args(argv)


def attach_stage_timers(network: MaskedFusionTransformer, seconds: dict[str, float], rows: dict[str, int]) -> None:
    """Shadow the network's stage methods with wrappers that add their time and input rows to the dicts."""
    for stage in STAGES:
        method = getattr(network, stage)

        def timed(*args: Any, _method: Callable[..., Any] = method, _stage: str = stage, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = _method(*args, **kwargs)
            seconds[_stage] += time.perf_counter() - start
            first = args[0]
            rows[_stage] += next(iter(first.values())).shape[0] if isinstance(first, dict) else first.shape[0]
            return result

        setattr(network, stage, timed)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Print and return, for the forward pass and the selector, the median ms and rows per stage."""
    arguments = parse_arguments(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(arguments.threads)
    try:
        configuration = CONFIGURATIONS[arguments.configuration]
        torch.manual_seed(arguments.seed)
        generator = torch.Generator().manual_seed(arguments.seed)
        network = configuration.build_network(configuration.embedding).eval()
        prototypes = fit_subset_prototypes(network, [make_batch(configuration, 64, generator)], min_samples_per_class=1)
        selector = DyMoSelector(network, prototypes, calibration=configuration.calibration)
        inputs = configuration.make_inputs(arguments.batch_size, generator)
        if arguments.candidates == "eta":
            present_mask = random_missing_mask(arguments.batch_size, network.num_modalities, ETA, generator)
        else:
            present_mask = exact_missing_mask(arguments.batch_size, network.num_modalities, int(arguments.candidates), generator)
        all_present = torch.ones_like(present_mask)

        seconds = dict.fromkeys(STAGES, 0.0)
        rows = dict.fromkeys(STAGES, 0)
        attach_stage_timers(network, seconds, rows)

        def forward() -> Any:
            with torch.no_grad():
                return network(inputs, all_present)

        methods = {"forward": forward, "selector": lambda: selector(inputs, present_mask)}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
        for repeat in range(arguments.repeats + 1):  # the first round is a warm-up
            for name, method in methods.items():
                for stage in STAGES:
                    seconds[stage], rows[stage] = 0.0, 0
                start = time.perf_counter()
                method()
                total = time.perf_counter() - start
                if repeat > 0:
                    sample = {"total": total, **seconds, "rest": total - sum(seconds.values())}
                    sample.update({f"{stage} rows": float(rows[stage]) for stage in STAGES})
                    samples[name].append(sample)

        print(
            f"# {configuration.name}, batch {arguments.batch_size}, candidates {arguments.candidates}, "
            f"threads {arguments.threads}, medians of {arguments.repeats} runs (ms, rows)"
        )
        report = {}
        for name, runs in samples.items():
            report[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            timings = " ".join(
                f"{key}={1000 * report[name][key]:.1f}" for key in ("total", *STAGES, "rest")
            )
            counts = " ".join(f"{stage}_rows={report[name][f'{stage} rows']:.0f}" for stage in STAGES)
            print(f"{name:<9} {timings} {counts}")
        return report
    finally:
        torch.set_num_threads(previous_threads)


if __name__ == "__main__":
    main()
