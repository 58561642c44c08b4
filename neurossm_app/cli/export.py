"""``neurossm-app-export RUN_DIR BUNDLE.zip``: a finished group run's model as one shareable file.

The bundle (:mod:`neurossm_app.group.bundle`) holds the checkpoints, their configurations, the
resolved settings, atlas ROI names, class names, cross-validated metrics, software versions and a
model card; no subject identifiers and no time series. Documented in docs/usage.md
("`neurossm-app-export`: sharing a trained model").
"""

from __future__ import annotations

import argparse
import logging
import sys

from neurossm_app import __version__
from neurossm_app.argtypes import BidsAppParser, abs_path
from neurossm_app.errors import run_reporting_errors

LOGGER = logging.getLogger("neurossm_app")
PROG = "neurossm-app-export"


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``neurossm-app-export``."""
    parser = BidsAppParser(
        prog=PROG,
        description="Write the trained NeuroSSM ensemble of a finished group run (every fold x seed "
        "checkpoint, settings, atlas ROI names, classes, cross-validated metrics, versions and a "
        "MODEL.md model card) to one zip that `neurossm-app BIDS_DIR OUTPUT_DIR group --predict-with "
        "BUNDLE.zip` reads. It holds no subject identifiers and no time series.",
        epilog="Exit codes: 0 ok, 64 usage, 65 an unfinished or damaged run, 66 RUN_DIR missing, "
        "73 BUNDLE.zip exists or cannot be written. See docs/usage.md.",
    )
    parser.add_argument("run_dir", type=abs_path, help="a finished group run: OUTPUT_DIR/group/<run-name>")
    parser.add_argument("bundle", type=abs_path, help="the zip to write (never over an existing file)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="shows tracebacks on errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app-export``; returns the exit code (also used by tests)."""
    try:
        opts = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (64), already printed
        return int(done.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def work() -> None:
        from neurossm_app.group.bundle import export_bundle

        path = export_bundle(opts.run_dir, opts.bundle)
        LOGGER.info("%s: wrote %s (%d bytes)", PROG, path, path.stat().st_size)

    return run_reporting_errors(PROG, opts.verbose, work)


if __name__ == "__main__":
    sys.exit(main())
