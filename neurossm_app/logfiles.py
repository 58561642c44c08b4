"""The log file of a call: ``<folder>/logs/<time>_<tag>_<pid>.log``, for both levels.

The group level writes one per call into its run folder (``OUTPUT_DIR/group/<run-name>/logs/``),
the participant level into ``OUTPUT_DIR/logs/``. Both check their inputs before they create
anything, so the lines logged meanwhile are held (:func:`held_log_records`) and written at the top
of the file once it exists.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _logging_info(logger: logging.Logger):
    """The logger's INFO lines made, for the log file, even where nothing set up logging (the
    CLI sets the root logger to INFO; a library call or a test leaves it at WARNING)."""
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(previous)


class _HeldRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_log_records():
    """Hold the ``neurossm_app`` log records of the checks made before the log's folder exists, so
    :func:`log_to_file` can put them (the dataset's warnings) at the top of the call's log."""
    handler = _HeldRecords()
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        with _logging_info(logger):
            yield handler.records
    finally:
        logger.removeHandler(handler)


@contextmanager
def log_to_file(folder: Path, tag: str, earlier: list[logging.LogRecord] | tuple = ()):
    """Copy the ``neurossm_app`` log of this call to ``folder/logs/<time>_<tag>_<pid>.log``,
    starting with the ``earlier`` records (:func:`held_log_records`); yields the file's path."""
    logs = Path(folder) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}_{tag}_{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.DEBUG)
    for record in earlier:
        handler.handle(record)
    logger = logging.getLogger("neurossm_app")
    logger.addHandler(handler)
    try:
        with _logging_info(logger):
            yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
