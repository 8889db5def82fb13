"""Time DyMo selection against a plain forward pass and against the published loop structure.

For each configuration, batch size and missing-modality pattern, three things run in one
process, interleaved (a, b, c, a, b, c, ...) after a warm-up, and the median time of each is
reported:

(a) one plain forward pass of the network with every modality, recovered ones included.
(b) :class:`~pipeline.selection.DyMoSelector`. It encodes once and repeats only the fusion.
(c) :func:`benchmarks.published_loop.published_loop_select`. At every greedy step it runs full
    network passes for the current mask and for each candidate mask.

Before timing, (b) and (c) run once with counters on every encoder and on ``fuse``, and their
final masks, admitted modalities and logits are compared. Networks are untrained and inputs are
random (see :mod:`benchmarks.configurations`); prototypes are fitted on one random batch.

The last line printed is ``selection_vs_forward=<b/a> reference_vs_selection=<c/b>`` for the CAD
configuration at batch 64 (at the largest CAD batch measured when 64 is not among them).

Run from the repository root::

    .venv/bin/python -m benchmarks.selection_speed --output selection_speed.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks.configurations import (
    CONFIGURATIONS,
    BenchmarkConfiguration,
    exact_missing_mask,
    make_batch,
    random_missing_mask,
)
from benchmarks.published_loop import published_loop_select
from pipeline.networks import MaskedFusionTransformer
from pipeline.selection import DyMoSelector, fit_subset_prototypes

# Agreement tolerance on logits. The selector fuses start masks and candidates in one call of
# B + C rows and the reference fuses B rows per call, so float32 results differ by rounding.
LOGIT_TOLERANCE = 1e-4
FINAL_BATCH_SIZE = 64
ETA = 0.8


@dataclass
class CaseResult:
    """Timings, call counts and agreement of one configuration, batch size and missing pattern."""

    configuration: str
    batch_size: int
    candidates: str
    mean_candidates: float
    forward_ms: float
    selector_ms: float
    reference_ms: float
    selector_vs_forward: float
    reference_vs_selector: float
    encoder_calls_forward: int
    encoder_calls_selector: int
    encoder_calls_reference: int
    fusion_calls_forward: int
    fusion_calls_selector: int
    fusion_calls_reference: int
    steps_selector: int
    steps_reference: int
    mismatched_samples: int
    max_logit_difference: float

    @property
    def agrees(self) -> bool:
        return self.mismatched_samples == 0 and self.max_logit_difference <= LOGIT_TOLERANCE


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each method per case (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each method before timing (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--batch-sizes", type=str, default="16,64,256", help="comma-separated batch sizes (default 16,64,256)"
    )
    parser.add_argument(
        "--configurations", type=str, default="cad,digits", help="comma-separated subset of: cad, digits (default both)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, one timed run, no warm-up")
    parser.add_argument("--output", type=str, default=None, help="write the table to this CSV file")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and masks (default 0)")
    arguments = parser.parse_args(argv)
    arguments.batch_sizes = [int(value) for value in arguments.batch_sizes.split(",")]
    arguments.configurations = arguments.configurations.split(",")
    unknown = sorted(set(arguments.configurations) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {sorted(CONFIGURATIONS)}")
    if arguments.quick:
        arguments.batch_sizes = [8]
        arguments.repeats = 1
        arguments.warmup = 0
    if arguments.repeats < 1 or arguments.threads < 1 or min(arguments.batch_sizes) < 1:
        parser.error("--repeats, --threads and every batch size must be at least 1")
    return arguments


def missing_patterns(
    num_modalities: int, batch_size: int, generator: torch.Generator
) -> list[tuple[str, torch.Tensor]]:
    """Return (label, presence mask ``(B, M)``) pairs: exactly 1 to M - 1 candidates per sample, then eta = 0.8."""
    patterns = [
        (str(missing), exact_missing_mask(batch_size, num_modalities, missing, generator))
        for missing in range(1, num_modalities)
    ]
    if num_modalities > 2:
        patterns.append((f"eta={ETA}", random_missing_mask(batch_size, num_modalities, ETA, generator)))
    return patterns


def count_calls(network: MaskedFusionTransformer, function: Callable[[], Any]) -> tuple[int, int, Any]:
    """Run ``function`` once and return the encoder calls (all modalities), the ``fuse`` calls and its result."""
    counts = {"encoder": 0, "fuse": 0}

    def on_encoder(module: torch.nn.Module, args: Any, output: Any) -> None:
        counts["encoder"] += 1

    original_fuse = network.fuse

    def counted_fuse(*args: Any, **kwargs: Any) -> torch.Tensor:
        counts["fuse"] += 1
        return original_fuse(*args, **kwargs)

    hooks = [encoder.register_forward_hook(on_encoder) for encoder in network.encoders]
    network.fuse = counted_fuse  # an instance attribute shadows the method for this call only
    try:
        result = function()
    finally:
        del network.fuse
        for hook in hooks:
            hook.remove()
    return counts["encoder"], counts["fuse"], result


def time_interleaved(functions: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Run the functions in turn, ``warmup`` untimed rounds then ``repeats`` timed ones; return median ms each."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            timings[name].append(1000.0 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in timings.items()}


def run_case(
    configuration: BenchmarkConfiguration,
    network: MaskedFusionTransformer,
    selector: DyMoSelector,
    inputs: dict[str, Any],
    label: str,
    present_mask: torch.Tensor,
    repeats: int,
    warmup: int,
) -> CaseResult:
    all_present = torch.ones_like(present_mask)

    def forward() -> Any:
        with torch.no_grad():
            return network(inputs, all_present)

    def selection() -> Any:
        return selector(inputs, present_mask)

    def reference() -> Any:
        return published_loop_select(
            network, selector.prototypes, inputs, present_mask, calibration=selector.calibration, tau=selector.tau
        )

    encoder_forward, fusion_forward, _ = count_calls(network, forward)
    encoder_selector, fusion_selector, selected = count_calls(network, selection)
    encoder_reference, fusion_reference, expected = count_calls(network, reference)

    same_mask = (selected.present_mask == expected.present_mask).all(dim=1)
    same_admitted = (selected.admitted_mask == expected.admitted_mask).all(dim=1)
    mismatched = int((~(same_mask & same_admitted)).sum())
    logit_difference = float((selected.logits - expected.logits).abs().max())

    milliseconds = time_interleaved({"forward": forward, "selection": selection, "reference": reference}, repeats, warmup)
    return CaseResult(
        configuration=configuration.name,
        batch_size=present_mask.shape[0],
        candidates=label,
        mean_candidates=float((~present_mask).sum(dim=1).float().mean()),
        forward_ms=milliseconds["forward"],
        selector_ms=milliseconds["selection"],
        reference_ms=milliseconds["reference"],
        selector_vs_forward=milliseconds["selection"] / milliseconds["forward"],
        reference_vs_selector=milliseconds["reference"] / milliseconds["selection"],
        encoder_calls_forward=encoder_forward,
        encoder_calls_selector=encoder_selector,
        encoder_calls_reference=encoder_reference,
        fusion_calls_forward=fusion_forward,
        fusion_calls_selector=fusion_selector,
        fusion_calls_reference=fusion_reference,
        steps_selector=len(selected.steps),
        steps_reference=expected.steps,
        mismatched_samples=mismatched,
        max_logit_difference=logit_difference,
    )


def benchmark_configuration(
    configuration: BenchmarkConfiguration, batch_sizes: Sequence[int], repeats: int, warmup: int, seed: int, quick: bool
) -> list[CaseResult]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = configuration.build_network(configuration.embedding).eval()

    # Two subjects per class in quick runs, 64 subjects otherwise; every subset gets prototypes.
    fit_size = 2 * configuration.num_classes if quick else max(64, 2 * configuration.num_classes)
    prototypes = fit_subset_prototypes(
        network, [make_batch(configuration, fit_size, generator)], min_samples_per_class=1
    )
    selector = DyMoSelector(network, prototypes, calibration=configuration.calibration)

    results = []
    for batch_size in batch_sizes:
        inputs = configuration.make_inputs(batch_size, generator)
        for label, present_mask in missing_patterns(network.num_modalities, batch_size, generator):
            result = run_case(configuration, network, selector, inputs, label, present_mask, repeats, warmup)
            print(format_row(result), flush=True)
            results.append(result)
    return results


TABLE_HEADER = (
    f"{'config':<7} {'batch':>5} {'cand':>7} {'a ms':>9} {'b ms':>9} {'c ms':>10} {'b/a':>6} {'c/b':>6} "
    f"{'encoder a/b/c':>14} {'fusion a/b/c':>13} {'steps b/c':>9} {'agree':>5}"
)


def format_row(result: CaseResult) -> str:
    encoders = f"{result.encoder_calls_forward}/{result.encoder_calls_selector}/{result.encoder_calls_reference}"
    fusions = f"{result.fusion_calls_forward}/{result.fusion_calls_selector}/{result.fusion_calls_reference}"
    steps = f"{result.steps_selector}/{result.steps_reference}"
    return (
        f"{result.configuration:<7} {result.batch_size:>5} {result.candidates:>7} {result.forward_ms:>9.1f} "
        f"{result.selector_ms:>9.1f} {result.reference_ms:>10.1f} {result.selector_vs_forward:>6.2f} "
        f"{result.reference_vs_selector:>6.2f} {encoders:>14} {fusions:>13} {steps:>9} {'yes' if result.agrees else 'NO':>5}"
    )


def summary_line(results: Sequence[CaseResult]) -> str:
    """Return the closing line for the CAD configuration at batch 64, or at its largest batch without 64."""
    cad = [result for result in results if result.configuration == "cad"]
    if not cad:
        return "selection_vs_forward=nan reference_vs_selection=nan"
    chosen = [result for result in cad if result.batch_size == FINAL_BATCH_SIZE] or [max(cad, key=lambda r: r.batch_size)]
    result = chosen[0]
    return f"selection_vs_forward={result.selector_vs_forward:.3f} reference_vs_selection={result.reference_vs_selector:.3f}"


def write_csv(path: str, results: Sequence[CaseResult], threads: int) -> None:
    rows = [{**asdict(result), "agrees": result.agrees, "threads": threads} for result in results]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> list[CaseResult]:
    """Run the benchmark with command-line arguments ``argv`` and return one result per case."""
    arguments = parse_arguments(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(arguments.threads)
    try:
        print(
            f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
            f"threads {arguments.threads}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"repeats {arguments.repeats}, warm-up {arguments.warmup}; untrained networks, random inputs"
        )
        print("# a: plain forward, b: DyMoSelector, c: published loop structure; times are medians")
        print(TABLE_HEADER, flush=True)
        results: list[CaseResult] = []
        for name in arguments.configurations:
            results += benchmark_configuration(
                CONFIGURATIONS[name], arguments.batch_sizes, arguments.repeats, arguments.warmup, arguments.seed, arguments.quick
            )
        if arguments.output:
            write_csv(arguments.output, results, arguments.threads)
        print(summary_line(results))
    finally:
        torch.set_num_threads(previous_threads)
    return results


if __name__ == "__main__":
    main()
