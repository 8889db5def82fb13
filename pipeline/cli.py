"""Command line: ``python -m pipeline check-cohort``, ``build-cohort`` and ``write-masks``.

Exit codes: 0 on success, 1 when the cohort is not usable or the build failed, 2 for usage
errors (unknown options, input files that do not exist).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.check import CohortReport, check_cohort

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Cohort schemas shipped with the repository; build-cohort reads configs/<name>.yaml from here.
REPOSITORY_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format rows as a plain-text table with left-aligned columns separated by two spaces."""
    cells = [[str(value) for value in headers]] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _frame_table(frame: pd.DataFrame, percent: bool = False) -> str:
    rows = []
    for index, values in frame.iterrows():
        rows.append([index, *(f"{value:.1%}" if percent else value for value in values)])
    return format_table([frame.index.name or "", *frame.columns], rows)


def format_report(report: CohortReport) -> str:
    """Render problems (one per line) and the summary tables as plain text."""
    sections = [f"Cohort check: manifest {report.manifest_path}, schema {report.schema_path}"]

    if report.problems:
        rows = [
            [p.severity, p.file, "" if p.row is None else p.row, p.column or "", p.message, p.fix]
            for p in report.problems
        ]
        sections.append(
            f"Problems ({len(report.problems)}; row = data row, header not counted)\n"
            + format_table(["severity", "file", "row", "column", "message", "fix"], rows)
        )
    else:
        sections.append("Problems: none")

    summary = report.summary
    if summary is not None:
        split_note = "" if summary.has_split_column else " (no split column: the split is drawn by the data layer)"
        sections.append(
            f"Subjects per split{split_note}\n"
            + format_table(["split", "subjects"], list(summary.subjects_per_split.items()))
        )
        sections.append("Label balance per split\n" + _frame_table(summary.label_balance))
        if not summary.image_availability.empty:
            sections.append("Image availability\n" + _frame_table(summary.image_availability))
        if not summary.missing_rate.empty:
            sections.append("Missing rate per clinical column\n" + _frame_table(summary.missing_rate, percent=True))
        extra = ", ".join(summary.extra_columns) if summary.extra_columns else "none"
        sections.append(f"Extra columns ignored: {extra}")

    sections.append(f"Usable: {'yes' if report.usable else 'no'}")
    return "\n\n".join(sections)


def _run_check_cohort(args: argparse.Namespace) -> int:
    for flag, path in (("--manifest", args.manifest), ("--schema", args.schema)):
        if not path.is_file():
            print(f"error: {flag} {path}: file not found", file=sys.stderr)
            return EXIT_USAGE

    report = check_cohort(args.manifest, args.schema)
    print(format_report(report))
    return EXIT_OK if report.usable else EXIT_FAILED


def _run_build_cohort(args: argparse.Namespace) -> int:
    # Imported here so that check-cohort works while the cohort builders are not installed.
    try:
        from pipeline.data.cohorts import build_cohort
    except ImportError as error:
        if error.name not in ("pipeline.data.cohorts", "pipeline.data"):
            raise
        print(
            f"error: build-cohort is not available: pipeline.data.cohorts.build_cohort cannot be imported ({error})",
            file=sys.stderr,
        )
        return EXIT_FAILED

    # Without --seed the builder's own default applies, so the CLI and Python calls agree.
    options = {} if args.seed is None else {"seed": args.seed}
    if args.limit is not None:
        options["limit"] = args.limit
    try:
        result = build_cohort(args.name, args.output, **options)
    except ValueError as error:
        print(f"error: build-cohort {args.name}: {error}", file=sys.stderr)
        return EXIT_FAILED

    logger.info("Built cohort %s in %s", args.name, args.output)
    schema_path = args.schema or REPOSITORY_CONFIGS / f"{args.name}.yaml"
    if not schema_path.is_file():
        print(
            f"error: schema {schema_path} not found, so no missingness masks were written; pass --schema PATH",
            file=sys.stderr,
        )
        return EXIT_FAILED
    status = _write_masks(Path(result), schema_path, args.output, seeds=[0 if args.seed is None else args.seed])
    print(result)
    return status


def _run_write_masks(args: argparse.Namespace) -> int:
    return _write_masks(args.manifest, args.schema, args.manifest.parent, seeds=args.seeds, etas=args.etas, gammas=args.gammas)


def _write_masks(manifest_path: Path, schema_path: Path, cohort_dir: Path, **settings: Any) -> int:
    from pipeline.data.cohort_masks import write_cohort_masks
    from pipeline.data.manifest import ManifestError, read_manifest
    from pipeline.data.schema import SchemaError

    options = {key: value for key, value in settings.items() if value is not None}
    try:
        manifest = read_manifest(manifest_path, schema_path, strict=True)
        paths = write_cohort_masks(manifest, cohort_dir, **options)
    except (ManifestError, SchemaError, ValueError, FileNotFoundError) as error:
        print(f"error: cannot write missingness masks for {manifest_path}: {error}", file=sys.stderr)
        return EXIT_FAILED
    logger.info("Wrote %d masks under %s", len(paths), Path(cohort_dir) / "missingness")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-cohort", help="check a cohort's manifest, schema and images; print every problem")
    check.add_argument("--manifest", type=Path, required=True, help="manifest CSV of the cohort")
    check.add_argument("--schema", type=Path, required=True, help="cohort schema YAML (see configs/)")
    check.set_defaults(handler=_run_check_cohort)

    build = commands.add_parser("build-cohort", help="build a named cohort folder (manifest, images, masks)")
    build.add_argument("name", help="cohort name known to pipeline.data.cohorts")
    build.add_argument("--output", type=Path, required=True, help="folder to write the cohort into")
    build.add_argument("--seed", type=int, default=None, help="random seed of the build and the masks (default 0)")
    build.add_argument(
        "--limit", type=int, default=None,
        help="build only this many subjects, a small slice for quick trials (its split differs from the full build's)",
    )
    build.add_argument(
        "--schema", type=Path, default=None, help="schema used to write the masks (default: configs/NAME.yaml)"
    )
    build.set_defaults(handler=_run_build_cohort)

    masks = commands.add_parser(
        "write-masks", help="simulate missingness masks for a cohort and write them next to its manifest"
    )
    masks.add_argument("--manifest", type=Path, required=True, help="manifest CSV of the cohort")
    masks.add_argument("--schema", type=Path, required=True, help="cohort schema YAML (see configs/)")
    masks.add_argument("--seeds", type=int, nargs="+", default=None, help="simulation seeds (default: 0)")
    masks.add_argument("--etas", type=float, nargs="+", default=None, help="modality missing rates eta in [0, 1]")
    masks.add_argument("--gammas", type=float, nargs="+", default=None, help="clinical value missing rates gamma in [0, 1]")
    masks.set_defaults(handler=_run_write_masks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; argparse usage errors return 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return EXIT_USAGE if exit_request.code not in (0, None) else EXIT_OK

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)
