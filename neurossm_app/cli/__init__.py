"""Command-line entry point: parse, dispatch, and turn errors into BIDS-App exit codes.

This package is the only place that knows about argv; everything below it takes typed
arguments.
"""

from __future__ import annotations

import logging
import os
import sys

# nipype checks for updates over the network at import unless this is set.
os.environ.setdefault("NIPYPE_NO_ET", "1")

from neurossm_app.errors import run_reporting_errors

LOGGER = logging.getLogger("neurossm_app")


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app``; returns the exit code (also used by tests)."""
    from neurossm_app.cli.parser import build_parser, check_options

    parser = build_parser()
    opts = parser.parse_args(argv)
    _setup_logging(opts.verbose)

    def work() -> None:
        check_options(opts)
        limit_threads(opts.omp_nthreads)
        if opts.analysis_level == "participant":
            from neurossm_app.cli.participant import run_participant

            run_participant(opts)
        else:
            from neurossm_app.cli.group import run_group

            run_group(opts)

    return run_reporting_errors("neurossm-app", opts.verbose, work)


def limit_threads(n_threads: int) -> None:
    """Bound numpy/BLAS, numba and torch threads here and in worker processes started later."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    # numba fixes its pool size at first use and refuses a changed NUMBA_NUM_THREADS afterwards
    # (a second call in one process, as in tests); the scan bounds its threads per call anyway.
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n_threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n_threads)


def _setup_logging(verbosity: int) -> None:
    """One handler for everything, on the root logger; nipype's lines go through it too.

    nipype adds its own stdout handler to the ``nipype`` logger at import unless that logger
    already has one, and its records also reach the root handler, so each nipype line would be
    printed twice. A ``NullHandler`` there (before nipype is imported) keeps nipype from adding
    its handler; one it added in an earlier import (a second call in one process) is removed.
    """
    level = logging.DEBUG if verbosity > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s [%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    nipype_logger = logging.getLogger("nipype")
    for handler in list(nipype_logger.handlers):
        if type(handler) is logging.StreamHandler:
            nipype_logger.removeHandler(handler)
    if not nipype_logger.handlers:
        nipype_logger.addHandler(logging.NullHandler())
    for noisy in ("nipype.workflow", "nipype.interface", "nipype.utils", "bidsschematools"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbosity else logging.WARNING)
