"""The ``neurossm-app`` argument parser, grouped the way docs/usage.md reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.argtypes import BidsAppParser, abs_path, fraction, non_negative_int, positive_int
from neurossm_app.errors import InputMissingError, NeurossmError, OutputError, UsageError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none, the help already says it, or the option is a
    flag: a flag's default is the value of its destination (``--no-detrend`` stores False into a
    default of True), not something the user could type, so its help says what it does instead."""

    def _get_help_string(self, action):
        if (
            action.nargs == 0
            or action.default in (None, False, argparse.SUPPRESS)
            or "default" in (action.help or "")
        ):
            return action.help
        return super()._get_help_string(action)


def _derivative(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        name, path = "fmriprep", value
    return name.strip(), Path(path).expanduser().resolve()


def _optional_float(value: str) -> float | None:
    return None if value.lower() in ("none", "off", "0") else float(value)


def _dummy_scans(value: str) -> int | str:
    """``auto`` or a count of volumes (``--dummy-scans``, XCP-D's option)."""
    if value.lower() == "auto":
        return "auto"
    try:
        return non_negative_int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of volumes, got {value}") from None


def build_parser() -> argparse.ArgumentParser:
    """All options of ``neurossm-app``; every one is documented in docs/usage.md."""
    from neurossm_app.cli.group_options import add_group_options

    parser = BidsAppParser(
        prog="neurossm-app",
        description="NeuroSSM BIDS App: ROI time series from fMRIPrep derivatives (participant), "
        "then NeuroSSM training, cross-validation and CPA explanations (group).",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "bids_dir", type=abs_path, help="raw BIDS dataset (or the fMRIPrep derivatives dataset itself)"
    )
    parser.add_argument(
        "output_dir", type=abs_path, help="where derivatives are written (created if missing)"
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: extract ROI time series; group: train and explain",
    )
    parser.add_argument("--version", action="version", version=f"neurossm-app {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging; shows tracebacks on errors"
    )
    _add_selection_options(parser.add_argument_group("Selecting data"))
    _add_resource_options(parser.add_argument_group("Resources"))
    _add_participant_options(parser.add_argument_group("Participant level: atlas and denoising"))
    add_group_options(parser)
    return parser


def _add_selection_options(sel: argparse._ArgumentGroup) -> None:
    sel.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="subjects to process, with or without 'sub-' (default: all)",
    )
    sel.add_argument(
        "--session-label",
        nargs="+",
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    sel.add_argument("--task-id", nargs="+", metavar="TASK", help="tasks to process (default: all)")
    sel.add_argument(
        "--bids-filter-file",
        type=abs_path,
        metavar="FILE",
        help='JSON of extra pybids filters, e.g. {"bold": {"run": 1}} (fMRIPrep format)',
    )
    sel.add_argument(
        "-d",
        "--derivatives",
        type=_derivative,
        nargs="+",
        metavar="NAME=PATH",
        help="derivative datasets; fmriprep=PATH (default BIDS_DIR/derivatives/fmriprep)",
    )
    sel.add_argument(
        "--input-type",
        choices=["fmriprep", "hcp"],
        default="fmriprep",
        help="layout of the preprocessed data: fmriprep (BIDS derivatives) or hcp (HCP-YA minimal "
        "preprocessing, <subject>/MNINonLinear/Results/<run>; BIDS_DIR or -d hcp=PATH is that folder)",
    )
    sel.add_argument(
        "--participants-tsv",
        type=abs_path,
        metavar="FILE",
        help="participants.tsv with labels (default: BIDS_DIR/participants.tsv)",
    )
    sel.add_argument(
        "--skip-bids-validation", action="store_true", help="do not run bids-validator-deno on BIDS_DIR"
    )
    sel.add_argument(
        "--bids-database-dir",
        type=abs_path,
        metavar="DIR",
        help="reuse (or create) a pybids index here; speeds up large datasets",
    )


def _add_resource_options(perf: argparse._ArgumentGroup) -> None:
    perf.add_argument(
        "-w",
        "--work-dir",
        type=abs_path,
        default=Path("work").resolve(),
        metavar="DIR",
        help="nipype working directory (intermediate files; safe to delete)",
    )
    perf.add_argument(
        "--nprocs",
        "--n-cpus",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes for the participant workflow (MultiProc)",
    )
    perf.add_argument(
        "--omp-nthreads", type=positive_int, default=1, help="threads per process for numpy/torch"
    )
    perf.add_argument(
        "--mem-mb", type=positive_int, metavar="MB", help="memory limit for the workflow scheduler"
    )
    perf.add_argument(
        "--use-plugin",
        type=abs_path,
        metavar="FILE",
        help="nipype plugin YAML for the participant workflow ('plugin: SLURM', 'plugin_args: {...}')",
    )


def _atlas_label(value: str) -> str:
    """``--atlas-label``: a BIDS label (letters and digits)."""
    if not value or not all(ch.isascii() and ch.isalnum() for ch in value):
        raise argparse.ArgumentTypeError(f"expected letters and digits only (a BIDS label), got {value!r}")
    return value


def _add_atlas_options(part: argparse._ArgumentGroup) -> None:
    from neurossm_app.atlases import SPACES, atlas_choices

    part.add_argument(
        "--atlas",
        default=None,
        metavar="ATLAS",
        help=f"parcellation: {atlas_choices()}; a label image (.nii.gz with a .tsv of index and "
        "name beside it); or an atlas label of a BIDS atlas dataset given with -d atlases=PATH. "
        "Group level: which of the atlases in OUTPUT_DIR (default schaefer400 at participant "
        "level; at group level the preset's atlas, else the only one present)",
    )
    part.add_argument(
        "--atlas-label",
        type=_atlas_label,
        default=None,
        metavar="LABEL",
        help="atlas-<LABEL> of the outputs (default: the atlas's own, or for a custom atlas its "
        "atlas- entity, else its file name's letters and digits)",
    )
    part.add_argument(
        "--space",
        choices=[*SPACES, "fsLR"],
        default=None,
        help="template space of the fMRIPrep BOLD runs to read, and of the Schaefer atlas "
        f"(default: the first of {' and '.join(SPACES)} that the selected runs have; with "
        "--input-type hcp MNI152NLin6Asym); fsLR: the 91k grayordinates (dtseries), parcellated "
        "with TemplateFlow's fsLR Schaefer dlabel",
    )
    part.add_argument(
        "--atlas-dir",
        type=abs_path,
        metavar="DIR",
        help="nilearn data directory holding AAL3v2 (default: NILEARN_DATA or ~/nilearn_data); "
        "Schaefer comes from TEMPLATEFLOW_HOME",
    )


def _add_participant_options(part: argparse._ArgumentGroup) -> None:
    from neurossm_app.participant.clean import CONFOUND_STRATEGIES

    _add_atlas_options(part)
    part.add_argument(
        "--confounds",
        choices=list(CONFOUND_STRATEGIES),
        default="36P",
        help="fMRIPrep confounds regressed out",
    )
    part.add_argument(
        "--high-pass",
        type=_optional_float,
        default=0.01,
        metavar="HZ",
        help="high-pass cut-off in Hz ('none' to disable)",
    )
    part.add_argument(
        "--low-pass",
        type=_optional_float,
        default=0.1,
        metavar="HZ",
        help="low-pass cut-off in Hz ('none' to disable)",
    )
    part.add_argument(
        "--no-detrend",
        dest="detrend",
        action="store_false",
        help="do not remove a linear trend before filtering (default: the trend is removed)",
    )
    part.add_argument(
        "--standardize",
        choices=["zscore_sample", "zscore", "psc", "none"],
        default="zscore_sample",
        help="scaling of each ROI's cleaned signal",
    )
    part.add_argument(
        "--fd-thresh",
        type=_optional_float,
        default=None,
        metavar="MM",
        help="censor volumes with framewise displacement above this (off by default); "
        "censored rows are written as n/a",
    )
    part.add_argument(
        "--dvars-thresh",
        type=_optional_float,
        default=None,
        metavar="SD",
        help="censor volumes with standardized DVARS above this (off by default)",
    )
    part.add_argument(
        "--dummy-scans",
        type=_dummy_scans,
        default="auto",
        metavar="{auto,N}",
        help="non-steady-state volumes at the start of each run, left out of the fit and written as "
        "n/a rows with every strategy: auto takes those fMRIPrep flagged (non_steady_state_outlier "
        "columns), N the first N",
    )
    part.add_argument(
        "--min-coverage",
        type=fraction,
        default=0.5,
        help="ROIs with less of their volume inside the brain mask are n/a",
    )


def _work_dir_problem(work_dir: Path) -> str | None:
    """Why nipype could not create or write ``-w`` (its nearest existing folder decides), or None."""
    existing = next(p for p in (work_dir, *work_dir.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == work_dir else f"is inside {existing}, which is a file"
        return f"-w/--work-dir {work_dir} {what}, not a directory; give a folder (created if missing)."
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"-w/--work-dir {work_dir} cannot be written ({existing} is read-only); give a writable folder."
        )
    return None


def check_options(opts: argparse.Namespace) -> None:
    """Checks that need several options at once; collects every problem and reports them together."""
    problems: list[NeurossmError] = []
    if not opts.bids_dir.is_dir():
        problems.append(
            InputMissingError(
                f"BIDS_DIR {opts.bids_dir} does not exist or is not a directory; check the path "
                "(in a container, bind the folder and give its path inside the container)."
            )
        )
    if opts.analysis_level == "participant":
        problem = _work_dir_problem(opts.work_dir)
        if problem:
            problems.append(OutputError(problem))
    for flag, path in (
        ("--bids-filter-file", opts.bids_filter_file),
        ("--participants-tsv", opts.participants_tsv),
    ):
        if path is not None and not path.is_file():
            problems.append(InputMissingError(f"{flag} {path} does not exist; check the path."))
    try:
        from neurossm_app.bids import strip_prefix

        if opts.participant_label:
            opts.participant_label = [strip_prefix(p, "sub") for p in opts.participant_label]
        if opts.session_label:
            opts.session_label = [strip_prefix(s, "ses") for s in opts.session_label]
    except NeurossmError as err:
        problems.append(err)
    if opts.high_pass and opts.low_pass and opts.high_pass >= opts.low_pass:
        problems.append(UsageError(f"--high-pass {opts.high_pass} must be below --low-pass {opts.low_pass}."))
    if opts.standardize == "none":
        opts.standardize = None
    opts.derivatives = dict(opts.derivatives or [])
    for name, path in opts.derivatives.items():
        if not path.is_dir():
            problems.append(
                InputMissingError(f"derivatives {name}={path} does not exist; check -d {name}=PATH.")
            )
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0]
    first = problems[0]
    raise type(first)("; ".join(str(p).rstrip(".") for p in problems) + ".")
