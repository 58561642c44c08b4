"""Command-line entry point: parse, dispatch, and turn errors into BIDS-App exit codes.

This package is the only place that knows about argv; everything below it takes typed
arguments.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# nipype checks for updates over the network at import unless this is set.
os.environ.setdefault("NIPYPE_NO_ET", "1")

from neurossm_app.errors import run_reporting_errors
from neurossm_app.interrupts import EX_TERMINATED, handle_signals

LOGGER = logging.getLogger("neurossm_app")


def main(argv: list[str] | None = None) -> int:
    """Run ``neurossm-app``; returns the exit code (also used by tests)."""
    from neurossm_app.cli.parser import build_parser, check_options

    parser = build_parser()
    opts = parser.parse_args(argv)
    # The exact call, for the run records (provenance): passed down, never read from sys.argv below.
    opts.command_line = ["neurossm-app", *(sys.argv[1:] if argv is None else argv)]
    _setup_logging(opts.verbose)

    def work() -> None:
        check_options(opts)
        with limit_threads(opts.omp_nthreads):
            if opts.analysis_level == "participant":
                from neurossm_app.cli.participant import run_participant

                run_participant(opts)
            else:
                from neurossm_app.cli.group import run_group

                run_group(opts)

    # SIGTERM (a scheduler's time limit) ends the call as Ctrl-C does, with the same line, but 143.
    with handle_signals() as signals:
        code = run_reporting_errors("neurossm-app", opts.verbose, work)
    return EX_TERMINATED if signals["received"] == signal.SIGTERM else code


#: The variables that bound the OpenMP and BLAS pools of numpy, scipy, torch and their workers.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def limit_threads(n_threads: int) -> Iterator[None]:
    """Bound numpy/BLAS and OpenMP threads to ``n_threads`` for one command, then restore them.

    Inside, :data:`THREAD_VARIABLES` are set, so worker processes started inside (nipype's
    MultiProc workers) and libraries first loaded inside inherit the bound, and threadpoolctl
    bounds the BLAS and OpenMP libraries already loaded. On exit the environment, those
    libraries' limits and torch's thread count (which the group level sets; restored when torch
    was imported before) are what they were, so a notebook or an in-process test gets its
    process back. ``NUMBA_NUM_THREADS`` is left alone: numba sizes its pool once and refuses a
    changed value afterwards, so setting it here and removing it on exit would break the next
    compilation in the process; the scan bounds numba's threads on each call instead.
    """
    from threadpoolctl import threadpool_limits

    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    os.environ.update({var: str(n_threads) for var in THREAD_VARIABLES})
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)


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
