"""Compare the training throughput of subset training with one encoder pass per batch against re-encoding per subset.

Both loops draw ``A`` modality subsets per sample with
:func:`~pipeline.training.subset_sampling.sample_subsets`, compute the same loss
(:class:`~pipeline.training.losses.SubsetPrototypeLoss`) and take one Adam step per batch:

- encode once: :class:`~pipeline.training.SubsetTrainer`, which encodes each batch once and fuses
  all ``A`` draws in one call;
- re-encode: for each of the ``A`` draws, a full forward pass (every encoder on every row, then
  fusion under that draw's masks), with the ``A`` losses summed before the backward pass, the way
  the published code trains.

Each loop trains its own copy of the same untrained network on the same random data, and epochs
of the two loops alternate. The samples per second are the training samples of one epoch divided
by the median epoch time. Validation is not timed.

Run from the repository root::

    .venv/bin/python -m benchmarks.training_speed
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.configurations import CONFIGURATIONS, BenchmarkConfiguration, make_batch
from pipeline.networks import MaskedFusionTransformer
from pipeline.networks.batch import unpack_batch
from pipeline.training import SubsetTrainer
from pipeline.training.losses import SubsetPrototypeLoss
from pipeline.training.prototypes import ClassPrototypeAccumulator
from pipeline.training.subset_sampling import sample_subsets

SUBSETS_PER_BATCH = {"cad": 2, "digits": 5}
LEARNING_RATE = 1e-4


@dataclass
class TrainingResult:
    """Median throughput of the two training loops on one configuration."""

    configuration: str
    samples: int
    batch_size: int
    subsets_per_batch: int
    encode_once_samples_per_second: float
    reencode_samples_per_second: float
    encoder_calls_per_batch_encode_once: float
    encoder_calls_per_batch_reencode: float

    @property
    def speedup(self) -> float:
        return self.encode_once_samples_per_second / self.reencode_samples_per_second


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="training samples per epoch (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each loop (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop before timing (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--configurations", type=str, default="cad,digits", help="comma-separated subset of: cad, digits (default both)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 samples in batches of 8, one timed epoch")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data and subset draws (default 0)")
    arguments = parser.parse_args(argv)
    arguments.configurations = arguments.configurations.split(",")
    unknown = sorted(set(arguments.configurations) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {sorted(CONFIGURATIONS)}")
    if arguments.quick:
        arguments.samples, arguments.batch_size, arguments.repeats, arguments.warmup = 16, 8, 1, 0
    if min(arguments.samples, arguments.batch_size, arguments.repeats, arguments.threads) < 1:
        parser.error("--samples, --batch-size, --repeats and --threads must be at least 1")
    return arguments


class EncodeOnceLoop:
    """One epoch of :class:`SubsetTrainer`: each batch encoded once, all draws fused in one call."""

    def __init__(self, network: MaskedFusionTransformer, subsets_per_batch: int, seed: int) -> None:
        self.trainer = SubsetTrainer(network, subsets_per_batch=subsets_per_batch, learning_rate=LEARNING_RATE, seed=seed)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
        self.accumulator = ClassPrototypeAccumulator(network.num_classes, network.config["projection_dim"])
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = self.trainer.loss.warmup_epochs  # the prototype term counts, as in most epochs

    def run_epoch(self, batches: list[dict[str, Any]]) -> None:
        # NOTE: calls the trainer's private epoch method so that validation and checkpointing stay out of the timing.
        self.trainer._train_epoch(batches, self.epoch, self.optimizer, self.accumulator, self.generator)
        self.trainer.prototypes = self.accumulator.end_epoch()


class ReencodeLoop:
    """One epoch that runs the whole network, encoders included, once per drawn subset."""

    def __init__(self, network: MaskedFusionTransformer, subsets_per_batch: int, seed: int) -> None:
        self.network = network
        self.subsets_per_batch = subsets_per_batch
        self.loss = SubsetPrototypeLoss(network.embedding)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
        self.accumulator = ClassPrototypeAccumulator(network.num_classes, network.config["projection_dim"])
        self.prototypes = self.accumulator.prototypes.clone()
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = self.loss.warmup_epochs

    def run_epoch(self, batches: list[dict[str, Any]]) -> None:
        self.network.train()
        for batch in batches:
            inputs, present_mask, labels = unpack_batch(batch, self.network)
            masks, valid = sample_subsets(present_mask, self.subsets_per_batch, self.generator)  # (A, B, M), (A, B)
            total = torch.zeros(())
            for draw in range(self.subsets_per_batch):
                rows = valid[draw]
                tokens = self.network.encode(inputs)  # every encoder on every row, again for each draw
                logits, embedding = self.network.classify(self.network.fuse(tokens, masks[draw]))
                terms = self.loss(logits[rows], embedding[rows], labels[rows], self.prototypes, self.epoch)
                total = total + terms.total
                self.accumulator.accumulate(embedding[rows].detach(), labels[rows])
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        self.prototypes = self.accumulator.end_epoch()


def count_encoder_calls(network: MaskedFusionTransformer) -> dict[str, int]:
    """Attach a forward hook to every encoder that counts its calls in the returned dict."""
    counts = {"calls": 0}

    def on_encoder(module: torch.nn.Module, args: Any, output: Any) -> None:
        counts["calls"] += 1

    for encoder in network.encoders:
        encoder.register_forward_hook(on_encoder)
    return counts


def benchmark_configuration(configuration: BenchmarkConfiguration, arguments: argparse.Namespace) -> TrainingResult:
    torch.manual_seed(arguments.seed)
    generator = torch.Generator().manual_seed(arguments.seed)
    network = configuration.build_network(configuration.embedding)
    batches = []
    for start in range(0, arguments.samples, arguments.batch_size):
        size = min(arguments.batch_size, arguments.samples - start)
        batches.append(make_batch(configuration, size, generator, first_label=start))

    subsets_per_batch = SUBSETS_PER_BATCH[configuration.name]
    loops = {
        "encode_once": EncodeOnceLoop(copy.deepcopy(network), subsets_per_batch, arguments.seed),
        "reencode": ReencodeLoop(copy.deepcopy(network), subsets_per_batch, arguments.seed),
    }
    encoder_counts = {
        "encode_once": count_encoder_calls(loops["encode_once"].trainer.network),
        "reencode": count_encoder_calls(loops["reencode"].network),
    }

    for _ in range(arguments.warmup):
        for loop in loops.values():
            loop.run_epoch(batches)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(arguments.repeats):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop.run_epoch(batches)
            seconds[name].append(time.perf_counter() - start)

    batches_run = len(batches) * (arguments.warmup + arguments.repeats)
    return TrainingResult(
        configuration=configuration.name,
        samples=arguments.samples,
        batch_size=arguments.batch_size,
        subsets_per_batch=subsets_per_batch,
        encode_once_samples_per_second=arguments.samples / statistics.median(seconds["encode_once"]),
        reencode_samples_per_second=arguments.samples / statistics.median(seconds["reencode"]),
        encoder_calls_per_batch_encode_once=encoder_counts["encode_once"]["calls"] / batches_run,
        encoder_calls_per_batch_reencode=encoder_counts["reencode"]["calls"] / batches_run,
    )


def main(argv: Sequence[str] | None = None) -> list[TrainingResult]:
    """Run the benchmark with command-line arguments ``argv`` and return one result per configuration."""
    arguments = parse_arguments(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(arguments.threads)
    try:
        print(
            f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
            f"threads {arguments.threads}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{arguments.repeats} timed epochs after {arguments.warmup} warm-up; untrained networks, random data"
        )
        print(
            f"{'config':<7} {'samples':>7} {'batch':>5} {'A':>2} {'encode once/s':>13} {'re-encode/s':>11} "
            f"{'ratio':>6} {'encoder calls/batch':>19}",
            flush=True,
        )
        results = []
        for name in arguments.configurations:
            result = benchmark_configuration(CONFIGURATIONS[name], arguments)
            calls = f"{result.encoder_calls_per_batch_encode_once:g}/{result.encoder_calls_per_batch_reencode:g}"
            print(
                f"{result.configuration:<7} {result.samples:>7} {result.batch_size:>5} {result.subsets_per_batch:>2} "
                f"{result.encode_once_samples_per_second:>13.1f} {result.reencode_samples_per_second:>11.1f} "
                f"{result.speedup:>6.2f} {calls:>19}",
                flush=True,
            )
            results.append(result)
    finally:
        torch.set_num_threads(previous_threads)
    return results


if __name__ == "__main__":
    main()
