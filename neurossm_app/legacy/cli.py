"""``neurossm-app-import PRESET INPUT OUTPUT_DIR``: the original code's data files -> our layout.

Every option is documented in docs/legacy.md ("Coming from the original NeuroSSM code").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from neurossm_app import __version__
from neurossm_app.argtypes import BidsAppParser, abs_path
from neurossm_app.errors import run_reporting_errors

LOGGER = logging.getLogger("neurossm_app")
PROG = "neurossm-app-import"


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < 30:
        raise argparse.ArgumentTypeError(f"expected a repetition time in seconds (0-30), got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``neurossm-app-import``."""
    from neurossm_app.legacy.convert import PRESETS

    parser = BidsAppParser(
        prog=PROG,
        description="Convert the ROI arrays of the original NeuroSSM code (dataset_hcpRest_schaefer.npy, "
        "dataset_hcpTask_schaefer.npy, dataset_ppmi_atlas-AAL-3V2.pickle, HCP pheno.csv) into "
        "neurossm-app participant-level outputs, so that `neurossm-app OUTPUT_DIR OUTPUT_DIR group "
        "--preset PRESET` trains on them.",
        epilog="Exit codes: 0 ok, 18 filters left no scan, 64 usage (e.g. a pickle without "
        "--allow-pickle), 65 malformed data, 66 input missing, 73 cannot write (or would replace "
        "files without --force). See docs/legacy.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "preset",
        choices=PRESETS,
        help="which study the file belongs to: labels, atlas and TR follow (hcp-rest: sex from "
        "pheno.csv; hcp-task: the task of each record; ppmi: PD/Control from the records)",
    )
    parser.add_argument("input", type=abs_path, help="the original data file (.npy, .pickle, .npz)")
    parser.add_argument(
        "output_dir", type=abs_path, help="where the participant-level outputs go (created if missing)"
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging; tracebacks on errors"
    )
    _add_label_options(parser.add_argument_group("Labels and subjects"))
    _add_reading_options(parser.add_argument_group("Reading the file"))
    _add_output_options(parser.add_argument_group("Outputs"))
    return parser


def _add_label_options(labels: argparse._ArgumentGroup) -> None:
    labels.add_argument(
        "--pheno",
        type=abs_path,
        metavar="CSV",
        help="HCP_1200/Preprocessed/pheno.csv (columns Subject, Release, Gender; CSV or TSV); "
        "required for hcp-rest unless the records carry gender, and for --release-filter",
    )
    labels.add_argument(
        "--release-filter",
        nargs="+",
        default=[],
        metavar="RELEASE",
        help="keep only subjects whose pheno.csv Release is one of these (Q1: the original code's "
        "HCP-Task subject filter); default: every subject",
    )
    labels.add_argument(
        "--sample-table",
        type=abs_path,
        metavar="CSV",
        help="for arrays without identifiers (a numeric subjects x ROIs x volumes .npy): one row per "
        "sample, in array order, with a subject column and optionally task, group, sex, run, and "
        "person, family or site (copied to participants.tsv for the group level's --cv-group)",
    )
    labels.add_argument(
        "--label-map",
        nargs="+",
        metavar="VALUE=LABEL",
        help="recode label values before the built-in rules, e.g. 1=PD 2=Control 3=n/a "
        "(n/a: no label; such hcp-task scans are left out)",
    )


def _add_reading_options(reading: argparse._ArgumentGroup) -> None:
    from neurossm_app.atlases import DEFAULT_ATLASES
    from neurossm_app.legacy.convert import DEFAULT_ATLAS, LAYOUTS

    reading.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickles and object arrays; only for files you trust: unpickling runs code "
        "named in the file (neurossm-app-import restricts it to numpy, containers and pandas)",
    )
    reading.add_argument(
        "--atlas",
        choices=list(DEFAULT_ATLASES),  # the atlases whose label tables the package ships
        help="atlas of the ROI columns (default: "
        + ", ".join(f"{p}: {a}" for p, a in DEFAULT_ATLAS.items())
        + "); use the same --atlas at group level if you change it",
    )
    reading.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="axes of each sample: auto (default) transposes when the ROI count is on the second "
        "axis only; roi-time or time-roi force one",
    )


def _add_output_options(out: argparse._ArgumentGroup) -> None:
    from neurossm_app.legacy.convert import DEFAULT_TR

    out.add_argument(
        "--tr",
        type=_seconds,
        metavar="SECONDS",
        help="repetition time written to the sidecars (default: "
        + ", ".join(f"{p}: {t}" for p, t in DEFAULT_TR.items())
        + ", or a TR field of the records)",
    )
    out.add_argument(
        "--skip-dead-roi-scans",
        action="store_true",
        help="leave out scans with an all-zero ROI, as the original loaders did (default: keep them "
        "and write that ROI as n/a, like an ROI outside the brain mask at participant level)",
    )
    out.add_argument(
        "--force",
        action="store_true",
        help="replace existing files whose content differs (default: stop before writing anything)",
    )
    out.add_argument(
        "--dry-run", action="store_true", help="read and check everything, report, write nothing"
    )


def settings_from_options(opts: argparse.Namespace):
    """:class:`ImportSettings` from the parsed command line."""
    from neurossm_app.legacy.convert import DEFAULT_ATLAS, DEFAULT_TR, ImportSettings
    from neurossm_app.legacy.labels import parse_label_map

    return ImportSettings(
        preset=opts.preset,
        input=opts.input,
        output_dir=opts.output_dir,
        atlas=opts.atlas or DEFAULT_ATLAS[opts.preset],
        repetition_time=opts.tr if opts.tr is not None else DEFAULT_TR[opts.preset],
        tr_from_option=opts.tr is not None,
        pheno=opts.pheno,
        release_filter=tuple(opts.release_filter),
        sample_table=opts.sample_table,
        allow_pickle=opts.allow_pickle,
        layout=opts.layout,
        label_map=parse_label_map(opts.label_map),
        skip_dead_roi_scans=opts.skip_dead_roi_scans,
        force=opts.force,
    )


def describe(plan) -> str:
    """One line: what was found."""
    from neurossm_app.legacy.convert import TARGET

    kind = TARGET[plan.settings.preset]
    if kind == "task":
        counts = Counter(s.task for s in plan.scans)
    else:
        counts = Counter(plan.participants[kind])
    classes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    unit = "scans" if kind == "task" else "subjects"
    return (
        f"{len(plan.scans)} scan(s) of {len(plan.participants)} subject(s) from {plan.settings.input.name} "
        f"({plan.structure}, atlas {plan.atlas_label}); {kind} ({unit}): {classes}"
    )


def _warnings(plan) -> None:
    from neurossm_app.group.presets import load_presets
    from neurossm_app.legacy.convert import DEFAULT_ATLAS

    for reason, count in plan.skipped.items():
        LOGGER.warning("left out %d scan(s): %s", count, reason)
    window = load_presets()[plan.settings.preset]["dynamic_length"]
    lengths = [s.n_volumes for s in plan.scans]
    short = sum(n < window for n in lengths)
    if short:
        LOGGER.warning(
            "%d scan(s) are shorter than the %s training window (%d volumes; shortest %d): pass "
            "--dynamic-length %d or less at group level",
            short,
            plan.settings.preset,
            window,
            min(lengths),
            min(lengths),
        )
    square = sum(s.n_volumes == len(plan.roi_names) for s in plan.scans)
    if square and plan.settings.layout == "auto":
        LOGGER.warning(
            "%d scan(s) have as many volumes as ROIs; they were read as ROIs x volumes (the original "
            "layout): pass --layout time-roi if they are volumes x ROIs",
            square,
        )
    with_dead = sum(bool(s.excluded_rois) for s in plan.scans)
    if with_dead:
        LOGGER.warning("%d scan(s) have all-zero or missing ROIs, written as n/a", with_dead)
    if plan.settings.atlas != DEFAULT_ATLAS[plan.settings.preset]:
        LOGGER.warning(
            "atlas %s is not the %s preset's; add --atlas %s at group level",
            plan.settings.atlas,
            plan.settings.preset,
            plan.settings.atlas,
        )


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app-import``; returns the exit code (also used by tests)."""
    try:
        opts = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (64), already printed
        return int(done.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if opts.verbose > 1 else logging.INFO,
        format="%(asctime)s [%(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )

    def work() -> int:
        from neurossm_app.legacy.convert import DEFAULT_ATLAS, plan_import, write_import

        settings = settings_from_options(opts)
        plan = plan_import(settings)
        _warnings(plan)
        print(f"{PROG}: {describe(plan)}")
        if opts.dry_run:
            print(f"{PROG}: --dry-run: nothing written to {settings.output_dir}")
            return 0
        counts = write_import(plan)
        atlas = "" if settings.atlas == DEFAULT_ATLAS[settings.preset] else f" --atlas {settings.atlas}"
        print(
            f"{PROG}: {counts['written']} file(s) written, {counts['unchanged']} unchanged in "
            f"{settings.output_dir}\nnext: neurossm-app {settings.output_dir} {settings.output_dir} "
            f"group --preset {settings.preset}{atlas}"
        )
        return 0

    return run_reporting_errors(PROG, opts.verbose, work)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
