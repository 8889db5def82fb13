"""Footprint of the main job: the CAD bundle's inference, and how selection grows with subjects and modalities.

Run from the repository root:

    .venv/bin/python benchmarks/main_job.py              # full run (about 2 minutes)
    .venv/bin/python benchmarks/main_job.py --quick      # smoke check

Three measurements, printed as tables:

1. Wall time and peak resident memory of
   ``python -m monai.bundle run --config_file bundles/cad/inference.json`` in a subprocess, on
   the default cohort with the committed trained files (peak memory from ``getrusage`` of the
   child). The cohort must be built already (the first run of the bundle builds it).
2. Selection time against the number of subjects: the trained CAD cosine network and its
   prototypes on the test split's tokens repeated 1x, 4x and 16x, at gamma 0.5. Encoding is left
   out, so this times the greedy search itself, which is what grows with the cohort.
3. Selection time against the number of modalities (2 to 5): untrained networks of ``features``
   modalities with 4 tokens each, 1024 subjects, every subject missing all but one modality.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks.main_job")


def bundle_footprint(output_dir: Path) -> tuple[float, float]:
    """Run the CAD inference bundle once; return its wall time (s) and peak resident memory (MB)."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/cad/inference.json",
        "--output_dir", str(output_dir), "--run_name", "benchmark",
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the bundle run failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return seconds, peak_kb / 1024


def median_time(function, repeats: int) -> float:
    """Median wall time of ``function()`` in milliseconds over ``repeats`` runs after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def cad_tokens() -> tuple:
    """Return the selector, tokens and start and candidate masks of the CAD test split at gamma 0.5.

    NOTE: it calls private methods of ``MissingTableSweep`` to rebuild the sweep's tokens, so a
    change there can break this benchmark; the smoke test runs only ``--quick``, which skips it.
    """
    from pipeline.imputation import load_imputer
    from pipeline.selection import DyMoSelector
    from pipeline.workflows import MissingTableSweep

    sweep = MissingTableSweep(
        "cohorts/cad_demo/manifest.csv", "configs/cad_demo.yaml", "bundles/cad/models", "/tmp/main_job_unused",
        "/tmp/main_job_cache", methods=["dymo_cosine"],
    )
    from pipeline.imputation import recover_batch
    from pipeline.workflows.cohort_data import (
        SplitLoader,
        cohort_layout,
        load_encoders,
        open_cohort,
        read_table_mask,
    )

    manifest = open_cohort(sweep.manifest_path, sweep.schema_path)
    layout = cohort_layout(manifest, sweep.spatial_shape)
    encoders = load_encoders(sweep.models_dir / "tabular_encoders.json", manifest)
    models = sweep._load_models()
    model = models["cosine"]
    data = sweep._encode_images(SplitLoader(manifest, encoders, layout, sweep.cache_dir, 32), layout, models)
    columns = list(manifest.schema.tabular_columns(layout.table))
    hidden = torch.from_numpy(read_table_mask(manifest.path.parent, manifest, columns, data.subject_ids, 0.5))
    observed = dict(data.table, missing_values=data.table["missing_values"] | hidden)
    start = torch.stack([data.present[:, 0], ~observed["missing_values"].all(dim=1)], dim=1)
    recovered = recover_batch(observed, start, load_imputer(sweep.models_dir / "table_imputer.pt"), table_index=1)
    candidates = torch.stack([~data.present[:, 0], recovered.recovered.any(dim=1)], dim=1)
    tokens, observed_tokens = sweep._tokens(model, layout, observed, recovered.table, start[:, 0], start[:, 1])
    selector = DyMoSelector(model.network, model.prototypes, calibration="ratio", check_fingerprint=False)
    return selector, tokens, observed_tokens, start, candidates


def selection_by_subjects(factors: list[int], repeats: int) -> list[tuple[int, float]]:
    """Selection time (ms) for the CAD test split repeated ``factor`` times."""
    from pipeline.evaluation.methods import classify_dymo

    selector, tokens, observed_tokens, start, candidates = cad_tokens()
    rows = []
    for factor in factors:
        repeated = [tensor.repeat(factor, *([1] * (tensor.dim() - 1))) for tensor in (tokens, observed_tokens, start, candidates)]
        milliseconds = median_time(lambda: classify_dymo(selector, repeated[0], repeated[1], repeated[2], repeated[3]), repeats)
        rows.append((len(repeated[0]), milliseconds))
    return rows


def selection_by_modalities(counts: list[int], subjects: int, repeats: int) -> list[tuple[int, float, int]]:
    """Selection time (ms) and greedy steps for ``M`` features modalities, one observed per subject."""
    from pipeline.networks import MaskedFusionTransformer
    from pipeline.selection import DyMoSelector, fit_subset_prototypes

    rows = []
    for count in counts:
        torch.manual_seed(0)
        modalities = [{"name": f"m{index}", "encoder": "features", "in_features": 16, "num_tokens": 4} for index in range(count)]
        network = MaskedFusionTransformer(modalities, num_classes=10, dim=64, heads=4, projection_dim=32).eval()
        inputs = {f"m{index}": torch.randn(subjects, 16) for index in range(count)}
        labels = torch.arange(subjects) % 10
        present = torch.ones(subjects, count, dtype=torch.bool)
        prototypes = fit_subset_prototypes(network, [dict(inputs, present=present, label=labels)], min_samples_per_class=1)
        selector = DyMoSelector(network, prototypes, calibration="log_ratio", check_fingerprint=False)
        with torch.no_grad():
            tokens = network.encode(inputs)
        start = torch.zeros(subjects, count, dtype=torch.bool)
        start[torch.arange(subjects), torch.arange(subjects) % count] = True
        steps = len(selector.select_tokens(tokens, start).steps)
        rows.append((count, median_time(lambda: selector.select_tokens(tokens, start), repeats), steps))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and no bundle run, for a smoke check")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    os.chdir(REPOSITORY)

    print(f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    if not args.quick:
        seconds, megabytes = bundle_footprint(Path("/tmp/main_job_benchmark"))
        print("\n| job | wall time (s) | peak resident memory (MB) |\n|---|---|---|")
        print(f"| CAD inference bundle | {seconds:.1f} | {megabytes:.0f} |")

        print("\n| subjects | selection time (ms) | ms per subject |\n|---|---|---|")
        for subjects, milliseconds in selection_by_subjects([1, 4, 16], args.repeats):
            print(f"| {subjects} | {milliseconds:.1f} | {milliseconds / subjects:.3f} |")

    sizes = (64, [2, 3]) if args.quick else (1024, [2, 3, 4, 5])
    print("\n| modalities | candidates per subject | greedy steps | selection time (ms) |\n|---|---|---|---|")
    for count, milliseconds, steps in selection_by_modalities(sizes[1], sizes[0], 2 if args.quick else args.repeats):
        print(f"| {count} | {count - 1} | {steps} | {milliseconds:.1f} |")


if __name__ == "__main__":
    main()
