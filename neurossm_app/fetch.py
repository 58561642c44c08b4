"""``neurossm-app-fetch``: pre-fetch the atlases (and optionally Neurosynth) for offline runs.

The container image runs this at build time so that nothing is downloaded at run time; on a
cluster without internet, run it once on a login node (or any machine with internet) and point
``TEMPLATEFLOW_HOME`` / ``NILEARN_DATA`` at the result.

Where things go:

- Schaefer2018 (``all``: 400 parcels, 7 and 17 networks; any of 100-1000 parcels by name, e.g.
  ``schaefer100-7n``), ``res-01`` and ``res-02`` volumes and the ``.tsv`` label tables of both
  templates the BOLD runs may be in, ``MNI152NLin2009cAsym`` and ``MNI152NLin6Asym``:
  ``TEMPLATEFLOW_HOME/tpl-<space>/``, through ``templateflow.api.get``.
  TemplateFlow reads ``TEMPLATEFLOW_HOME`` when it is imported, so this module sets the variable
  first and must run as its own process.
- AAL3v2: ``NILEARN_DATA/aal_3v2/AAL3/AAL3v1.{nii,xml}``, through
  ``nilearn.datasets.fetch_atlas_aal(version="3v2")``.
- Neurosynth (``--neurosynth DIR``): NiMARE's files under ``DIR/neurosynth/`` (see
  :func:`fetch_neurosynth`).

``--check`` looks at the files on disk first (no network, nothing written), then resolves each
atlas with :func:`neurossm_app.atlases.get_atlas` exactly as the participant level does. It
prints one line per missing item and exits 66.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from neurossm_app import __version__
from neurossm_app.argtypes import BidsAppParser
from neurossm_app.atlases import (
    ATLASES,
    DEFAULT_ATLASES,
    SPACES,
    atlas_choices,
    atlas_files,
    default_templateflow_home,
    nilearn_data_dirs,
)
from neurossm_app.errors import (
    EX_NOINPUT,
    InputMissingError,
    NeurossmError,
    OutputError,
    UsageError,
    run_reporting_errors,
)
from neurossm_app.files import is_present
from neurossm_app.fmriprep import CIFTI_SPACE

PROG = "neurossm-app-fetch"
LOGGER = logging.getLogger("neurossm_app.fetch")

#: TemplateFlow resolutions fetched for the Schaefer atlases; the app itself reads ``res-02``.
SCHAEFER_RESOLUTIONS = (1, 2)

#: Neurosynth release fetched by :func:`fetch_neurosynth` (NiMARE's ``fetch_neurosynth`` arguments).
NEUROSYNTH_QUERY = {"version": "7", "source": "abstract", "vocab": "terms"}
#: The files NiMARE writes for :data:`NEUROSYNTH_QUERY`, under ``DIR/neurosynth/``.
NEUROSYNTH_FILES = (
    "data-neurosynth_version-7_coordinates.tsv.gz",
    "data-neurosynth_version-7_metadata.tsv.gz",
    "data-neurosynth_version-7_vocab-terms_source-abstract_type-tfidf_features.npz",
    "data-neurosynth_version-7_vocab-terms_vocabulary.txt",
)


# --------------------------------------------------------------------------------------------
# Where each atlas lives
# --------------------------------------------------------------------------------------------


def default_nilearn_data() -> Path:
    """The first nilearn data directory (``NILEARN_SHARED_DATA``, ``NILEARN_DATA``, ``~/nilearn_data``)."""
    return nilearn_data_dirs()[0]


def _set_templateflow_home(home: Path) -> None:
    """Point TemplateFlow at ``home``; it reads the variable once, when first imported."""
    home = home.expanduser().absolute()
    loaded = sys.modules.get("templateflow.conf")
    if loaded is not None and Path(loaded.TF_HOME) != home:
        raise UsageError(
            f"templateflow was already imported with TEMPLATEFLOW_HOME={loaded.TF_HOME}, not {home}; "
            f"run {PROG} as its own process (python -m neurossm_app.fetch)."
        )
    os.environ["TEMPLATEFLOW_HOME"] = str(home)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def schaefer_files(key: str, templateflow_home: Path) -> list[Path]:
    """Every file of one Schaefer2018 atlas that :func:`fetch_schaefer` provides: both
    resolutions and the label table, in each template of :data:`~neurossm_app.atlases.SPACES`,
    then the fsLR 32k dlabel (``--space fsLR``)."""
    volumes = [
        path
        for space in SPACES
        for path in atlas_files(key, templateflow_home, Path(), SCHAEFER_RESOLUTIONS, space)
    ]
    return [*volumes, *atlas_files(key, templateflow_home, Path(), space=CIFTI_SPACE)]


def fetch_schaefer(key: str, templateflow_home: Path) -> list[Path]:
    """Download one Schaefer2018 atlas (both resolutions and the label table, in both
    templates) with TemplateFlow."""
    spec = ATLASES[key]
    _set_templateflow_home(templateflow_home)
    try:
        from templateflow import api as tflow

        query = {"atlas": "Schaefer2018", "desc": spec.desc, "suffix": "dseg"}
        for space in SPACES:
            for res in SCHAEFER_RESOLUTIONS:
                tflow.get(space, resolution=res, extension=".nii.gz", **query)
            tflow.get(space, extension=".tsv", **query)
        tflow.get(CIFTI_SPACE, density="32k", extension=".dlabel.nii", **query)  # for --space fsLR
    except OSError as err:
        raise OutputError(f"cannot write to TEMPLATEFLOW_HOME={templateflow_home}: {err}.") from None
    except Exception as err:  # noqa: BLE001 - requests, RuntimeError from templateflow, ...
        raise InputMissingError(
            f"could not download {key} from TemplateFlow into {templateflow_home} "
            f"({type(err).__name__}: {_first_line(err)}); check the network connection."
        ) from None
    wanted = schaefer_files(key, templateflow_home)
    missing = [p for p in wanted if not is_present(p)]
    if missing:
        names = ", ".join(p.name for p in missing)
        raise InputMissingError(
            f"TemplateFlow did not provide {names} for {key} in {templateflow_home}; "
            "is it a TemplateFlow home (or a copy of one)?"
        )
    return wanted


def fetch_aal(nilearn_data: Path) -> list[Path]:
    """Download AAL3v2 with nilearn into ``nilearn_data/aal_3v2``."""
    from nilearn.datasets import fetch_atlas_aal

    try:
        Path(nilearn_data).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create the nilearn data directory {nilearn_data}: {err.strerror}."
        ) from None
    try:
        fetch_atlas_aal(version="3v2", data_dir=str(nilearn_data), verbose=1)
    except Exception as err:  # noqa: BLE001 - nilearn raises several types for "cannot download"
        raise InputMissingError(
            f"could not download AAL3v2 into {nilearn_data} ({type(err).__name__}: {_first_line(err)}); "
            "check the network connection."
        ) from None
    return atlas_files("aal3v2", Path(), nilearn_data)


def neurosynth_files(directory: Path) -> list[Path]:
    """The Neurosynth files :func:`fetch_neurosynth` leaves under ``directory``."""
    return [Path(directory) / "neurosynth" / name for name in NEUROSYNTH_FILES]


def fetch_neurosynth(directory: Path) -> list[Path]:
    """Download the Neurosynth database (version 7, abstract terms) with NiMARE into ``directory``.

    The files land in ``directory/neurosynth/`` (NiMARE's layout, :data:`NEUROSYNTH_FILES`); they
    are downloaded, not converted, so the group level decides how to load them. Already present
    files are kept.

    Returns
    -------
    list of Path
        The coordinates, metadata, term features and vocabulary files.
    """
    import warnings

    files = neurosynth_files(directory)
    try:
        # Created first: NiMARE uses the first *existing* DIR/neurosynth among data_dir,
        # NIMARE_SHARED_DATA, NIMARE_DATA and ~/nimare_data, so an older copy elsewhere would win.
        files[0].parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the Neurosynth directory {directory}: {err.strerror}.") from None
    had = {p for p in files if is_present(p)}
    try:
        from nimare.extract import fetch_neurosynth as nimare_fetch_neurosynth

        with warnings.catch_warnings():
            # NiMARE 0.22 flags the frozen Neurosynth snapshot as deprecated; it is what we want.
            warnings.simplefilter("ignore", FutureWarning)
            nimare_fetch_neurosynth(data_dir=str(directory), return_type="files", **NEUROSYNTH_QUERY)
    except BaseException as err:
        # NiMARE opens each file before downloading it and skips existing files on the next call:
        # remove what this call left half-written (often 0 bytes) so a retry downloads it.
        for path in set(files) - had:
            path.unlink(missing_ok=True)
        if not isinstance(err, Exception):
            raise
        raise InputMissingError(
            f"could not download Neurosynth into {directory} ({type(err).__name__}: {_first_line(err)}); "
            "check the network connection."
        ) from None
    missing = [p.name for p in files if not is_present(p)]
    if missing:
        raise InputMissingError(f"Neurosynth download into {directory} is incomplete: {', '.join(missing)}.")
    return files


# --------------------------------------------------------------------------------------------
# Offline check
# --------------------------------------------------------------------------------------------


def check(
    keys: list[str], templateflow_home: Path, nilearn_data: Path, neurosynth: Path | None = None
) -> list[str]:
    """Check offline that every atlas in ``keys`` (and Neurosynth) is available.

    Returns
    -------
    list of str
        One line per problem; empty when everything resolves. Nothing is downloaded or written:
        files are looked for on disk before TemplateFlow or nilearn is asked.
    """
    problems = []
    resolvable = []
    for key in keys:
        # Schaefer: both templates and the fsLR dlabel; AAL3v2: one file for both templates
        spaces = (*SPACES, CIFTI_SPACE) if ATLASES[key].source == "templateflow" else SPACES[:1]
        wanted = [
            p for space in spaces for p in atlas_files(key, templateflow_home, nilearn_data, space=space)
        ]
        missing = [p for p in wanted if not is_present(p)]
        if missing:
            where = (
                f"--templateflow-home {templateflow_home}"
                if ATLASES[key].source == "templateflow"
                else f"--nilearn-data {nilearn_data}"
            )
            problems += [
                f"missing: {key}: {path}; fetch it with `{PROG} --atlas {key} {where}` "
                "on a machine with internet."
                for path in missing
            ]
        else:
            resolvable.append(key)
    if any(ATLASES[key].source == "templateflow" for key in resolvable):
        _set_templateflow_home(templateflow_home)  # get_atlas reads TEMPLATEFLOW_HOME, as the app does
    for key in resolvable:
        spaces = (*SPACES, CIFTI_SPACE) if ATLASES[key].source == "templateflow" else SPACES[:1]
        problems += [line for space in spaces if (line := _check_resolves(key, nilearn_data, space))]

    if neurosynth is not None:
        absent = [p for p in neurosynth_files(neurosynth) if not is_present(p)]
        problems += [
            f"missing: neurosynth: {path}; fetch it with `{PROG} --atlas none --neurosynth {neurosynth}`."
            for path in absent
        ]
        if not absent:
            print(f"ok: neurosynth: {Path(neurosynth) / 'neurosynth'}")
    return problems


def _check_resolves(key: str, nilearn_data: Path, space: str) -> str | None:
    """Resolve one atlas in one space as the participant level does; the problem, or None."""
    from neurossm_app.atlases import get_atlas

    try:
        atlas = get_atlas(key, atlas_dir=nilearn_data, space=space)
    except NeurossmError as err:
        return f"unusable: {key}: {err}"
    if atlas.n_rois == 0:
        return f"unusable: {key}: the label table of {atlas.image} lists no regions."
    print(f"ok: {key}: {atlas.n_rois} regions, {atlas.image}")
    return None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``neurossm-app-fetch`` argument parser; every option is documented in docs/usage.md."""
    parser = BidsAppParser(
        prog=PROG,
        description="Download the atlases neurossm-app uses (Schaefer2018 via TemplateFlow, AAL3v2 via "
        "nilearn) and optionally Neurosynth into local caches, or check offline that they are there.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--atlas",
        nargs="+",
        choices=[*ATLASES, "all", "none"],
        default=["all"],
        metavar="ATLAS",
        help=f"atlases to fetch or check: {atlas_choices()}; 'all' ({', '.join(DEFAULT_ATLASES)}: the "
        "presets' and the container's) or 'none'",
    )
    parser.add_argument(
        "--templateflow-home",
        type=Path,
        metavar="DIR",
        help="TemplateFlow home for Schaefer2018 (default: TEMPLATEFLOW_HOME, else TemplateFlow's cache)",
    )
    parser.add_argument(
        "--nilearn-data",
        type=Path,
        metavar="DIR",
        help="nilearn data directory for AAL3v2 (default: NILEARN_DATA, else ~/nilearn_data)",
    )
    parser.add_argument(
        "--neurosynth",
        type=Path,
        metavar="DIR",
        help="also fetch (or check) Neurosynth version 7 abstract terms with NiMARE into DIR/neurosynth",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="download nothing: verify that the atlases resolve offline (exit 66 if not)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="show tracebacks on errors")
    return parser


def _atlas_keys(choices: list[str]) -> list[str]:
    if "none" in choices and len(choices) > 1:
        raise UsageError("--atlas none cannot be combined with other atlases.")
    if "all" in choices:
        choices = [*choices, *DEFAULT_ATLASES]
    return [key for key in ATLASES if key in choices]  # registry order, no duplicates


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no message"


def run(opts: argparse.Namespace) -> int:
    """Fetch or check as ``opts`` says; returns the exit code."""
    keys = _atlas_keys(opts.atlas)
    tf_home = (opts.templateflow_home or default_templateflow_home()).expanduser().absolute()
    nilearn_data = (opts.nilearn_data or default_nilearn_data()).expanduser().absolute()
    neurosynth = opts.neurosynth.expanduser().absolute() if opts.neurosynth else None
    if opts.check:
        problems = check(keys, tf_home, nilearn_data, neurosynth)
        for line in problems:
            print(f"{PROG}: {line}", file=sys.stderr)
        return EX_NOINPUT if problems else 0
    for key in keys:
        if ATLASES[key].source == "templateflow":
            files = fetch_schaefer(key, tf_home)
        else:
            files = fetch_aal(nilearn_data)
        print(f"fetched: {key}: {', '.join(str(f) for f in files)}")
    if neurosynth is not None:
        files = fetch_neurosynth(neurosynth)
        print(f"fetched: neurosynth: {files[0].parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app-fetch``; returns the exit code (0, 64 usage, 66 missing, 73 unwritable)."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_reporting_errors(PROG, opts.verbose, lambda: run(opts))


if __name__ == "__main__":
    sys.exit(main())
