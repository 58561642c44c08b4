"""``neurossm-synth OUT_DIR``: command-line front end of :func:`make_dataset`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from neurossm_app.argtypes import BidsAppParser, positive_int
from neurossm_app.synthetic.dataset import SyntheticDatasetError, make_dataset


def _label_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``neurossm-synth`` argument parser."""
    parser = BidsAppParser(
        prog="neurossm-synth",
        description="Write a synthetic BIDS dataset with fMRIPrep-style derivatives, offline atlases "
        "(TemplateFlow Schaefer-2018, nilearn AAL3v2) and planted class effects.",
    )
    parser.add_argument("out_dir", type=Path, help="dataset root to create (must be new or empty)")
    design = parser.add_argument_group("dataset design")
    design.add_argument("--subjects", type=int, default=8, help="number of participants (default 8)")
    design.add_argument(
        "--tasks",
        type=_label_list,
        default=["rest"],
        help="task label or comma list, e.g. motor,language,wm (default rest)",
    )
    design.add_argument("--runs", type=int, default=1, help="runs per task and session (default 1)")
    design.add_argument(
        "--sessions",
        type=_label_list,
        default=None,
        help="comma list of session labels, e.g. 1,2 (default: no session level)",
    )
    design.add_argument(
        "--layout",
        choices=["fmriprep", "hcp"],
        default="fmriprep",
        help="fmriprep: raw BIDS + derivatives/fmriprep; hcp: HCP-YA minimal preprocessing "
        "(<subject>/MNINonLinear/Results/<run>, for --input-type hcp) (default fmriprep)",
    )
    design.add_argument(
        "--cifti",
        action="store_true",
        help="also write fsLR grayordinates (dtseries) on a small synthetic surface: fMRIPrep's "
        "space-fsLR_den-91k_bold.dtseries.nii, or HCP's <run>_Atlas_MSMAll.dtseries.nii",
    )
    acquisition = parser.add_argument_group("acquisition")
    acquisition.add_argument("--volumes", type=int, default=200, help="volumes per run (default 200)")
    acquisition.add_argument("--tr", type=float, default=0.72, help="repetition time in s (default 0.72)")
    acquisition.add_argument(
        "--voxel-size",
        "--voxel_size",
        dest="voxel_size",
        type=float,
        default=4.0,
        help="output voxel size in mm; 2 gives fMRIPrep's res-2 grid (default 4)",
    )
    other = parser.add_argument_group("other")
    other.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    other.add_argument(
        "--nprocs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="participants simulated and written at once; the files are the same for any number "
        "(default: the CPU count)",
    )
    other.add_argument(
        "--atlas-cache",
        "--atlas_cache",
        dest="atlas_cache",
        type=Path,
        default=None,
        help="where to put the atlases (default OUT_DIR/sourcedata/atlases); no folder on the path may "
        "look like a TemplateFlow entity (atlas-*, res-*, desc-*, ...)",
    )
    other.add_argument(
        "--custom-atlas",
        "--custom_atlas",
        dest="custom_atlas",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a custom-atlas example: a BIDS atlas dataset in DIR with a 100-parcel atlas "
        "(atlas-Synth100, a label NIfTI and its index/name TSV per template), for "
        "-d atlases=DIR --atlas Synth100",
    )
    other.add_argument(
        "--force", action="store_true", help="replace OUT_DIR if it is a previous neurossm-synth dataset"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-synth``; returns the exit code (0, 64 usage, 73 cannot create output)."""
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    try:
        out_dir = make_dataset(
            options.out_dir,
            subjects=options.subjects,
            tasks=options.tasks,
            runs=options.runs,
            volumes=options.volumes,
            tr=options.tr,
            voxel_size=options.voxel_size,
            seed=options.seed,
            atlas_cache=options.atlas_cache,
            sessions=options.sessions,
            force=options.force,
            layout=options.layout,
            cifti=options.cifti,
            nprocs=options.nprocs,
        )
    except SyntheticDatasetError as error:
        sys.stderr.write(f"neurossm-synth: error: {error}\n")
        return error.exit_code
    cache = options.atlas_cache.absolute() if options.atlas_cache else out_dir / "sourcedata" / "atlases"
    print(f"raw BIDS dataset:      {out_dir}")
    if options.layout == "hcp":
        print(f"HCP-YA layout:         {out_dir} (neurossm-app {out_dir} OUT participant --input-type hcp)")
    else:
        print(f"fMRIPrep derivatives:  {out_dir / 'derivatives' / 'fmriprep'}")
    print(f"planted effects:       {out_dir / 'sourcedata' / 'synthetic_truth.json'}")
    print("atlases (set before starting Python):")
    print(f"  export TEMPLATEFLOW_HOME={cache / 'templateflow'}")
    print(f"  export NILEARN_DATA={cache / 'nilearn_data'}")
    if options.custom_atlas is not None:
        from neurossm_app.synthetic.atlas import CUSTOM_ATLAS_LABEL, write_custom_atlas

        try:
            root = write_custom_atlas(options.custom_atlas.absolute())["root"]
        except OSError as error:
            where = options.custom_atlas
            sys.stderr.write(f"neurossm-synth: error: cannot write --custom-atlas {where}: {error}\n")
            return 73
        print(f"custom atlas (100 parcels): -d atlases={root} --atlas {CUSTOM_ATLAS_LABEL}")
    return 0
