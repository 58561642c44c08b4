"""``--use-plugin FILE``: the nipype plugin (and its arguments) that runs the participant workflow.

The file is YAML as fMRIPrep and XCP-D read it::

    plugin: SLURM
    plugin_args:
      sbatch_args: --time=01:00:00 --mem=8G
      max_jobs: 50

Without it, the workflow runs with MultiProc (``--nprocs`` > 1 and more than one run) or Linear.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neurossm_app.errors import InputMissingError, UsageError

_EXAMPLE = "e.g. 'plugin: SLURM' and 'plugin_args: {sbatch_args: --time=01:00:00}' (docs/hpc.md)"


def nipype_plugin_names() -> list[str]:
    """The plugins nipype provides (``MultiProc``, ``Linear``, ``SLURM``, ``SGE``, ...)."""
    from nipype.pipeline import plugins

    return sorted(
        name[: -len("Plugin")] for name in dir(plugins) if name.endswith("Plugin") and name != "Plugin"
    )


def load_plugin_file(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(plugin, plugin_args)`` from a nipype plugin file.

    Raises :class:`InputMissingError` (66) for a missing file and :class:`UsageError` (64) for a
    file that is not YAML, names no known plugin, or whose ``plugin_args`` is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"--use-plugin {path} does not exist; check the path.")
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"--use-plugin {path} is not valid YAML{where}; {_EXAMPLE}.") from None
    if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
        raise UsageError(f"--use-plugin {path} must name a nipype plugin with 'plugin: NAME'; {_EXAMPLE}.")
    name, known = content["plugin"], nipype_plugin_names()
    if name not in known:
        raise UsageError(
            f"--use-plugin {path} names plugin {name!r}, which nipype does not have; choose one of "
            f"{', '.join(known)}."
        )
    args = content.get("plugin_args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise UsageError(
            f"--use-plugin {path}: 'plugin_args' must be a mapping of the plugin's arguments; {_EXAMPLE}."
        )
    return name, args


def plugin_and_args(
    chosen: tuple[str, dict[str, Any]] | None,
    n_runs: int,
    n_procs: int,
    mem_mb: int | None,
    status_callback,
) -> tuple[str, dict[str, Any]]:
    """The plugin name and arguments for ``workflow.run``.

    ``chosen`` is what :func:`load_plugin_file` read (``None``: MultiProc for several runs and
    processes, else Linear). MultiProc gets ``--nprocs`` and ``--mem-mb`` where the file sets no
    ``n_procs`` or ``memory_gb``. Every plugin but the ``*Graph`` ones (which submit the whole
    graph at once and take no callback) reports finished runs to ``status_callback``.
    """
    if chosen is None:
        chosen = ("MultiProc", {}) if n_procs > 1 and n_runs > 1 else ("Linear", {})
    name, args = chosen[0], dict(chosen[1])
    if name in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", n_procs)
        args.setdefault("raise_insufficient", False)
        if mem_mb:
            args.setdefault("memory_gb", mem_mb / 1024)
    if not name.endswith("Graph"):
        args["status_callback"] = status_callback
    return name, args
