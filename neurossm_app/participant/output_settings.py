"""One participant configuration per OUTPUT_DIR: recorded by the first call, checked by the next.

The settings that change the numbers of a series (every :class:`CleaningSettings` field:
confounds, band-pass, detrend, standardization, censoring, coverage, dummy scans; and the space)
are written to ``OUTPUT_DIR/neurossm_participant_settings.json`` by the first call that writes a
run. A later call with other settings is refused before anything is written, so a rerun never
replaces series made one way with series made another way, and the group level never meets a
mixture. The atlas is not part of the record: several atlases may share one OUTPUT_DIR (their
file names carry ``atlas-<label>``).

An OUTPUT_DIR written before the record existed has none: its settings are read back from the
series' sidecars (:func:`neurossm_app.participant.extract.run_sidecar` writes them under the same
keys); a field they lack counts as not recorded, as at the group level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from neurossm_app import __version__
from neurossm_app.bids import TEMPLATE_SPACE
from neurossm_app.config import CleaningSettings
from neurossm_app.errors import DataError, UsageError
from neurossm_app.files import write_json

#: The record's file name, beside ``dataset_description.json``.
RECORD_NAME = "neurossm_participant_settings.json"
#: Shown for a setting that the sidecars of an older OUTPUT_DIR lack.
NOT_RECORDED = "not recorded"

#: CleaningSettings field -> (key in the record and in the sidecars, how the message names it).
#: A field not listed here is recorded under its CamelCase name and named as ``--its-name``.
_KNOWN = {
    "strategy": ("ConfoundStrategy", "--confounds"),
    "high_pass": ("HighPass", "--high-pass"),
    "low_pass": ("LowPass", "--low-pass"),
    "detrend": ("Detrend", "detrend (--no-detrend)"),
    "standardize": ("Standardize", "--standardize"),
    "fd_threshold": ("FDThreshold", "--fd-thresh"),
    "std_dvars_threshold": ("StdDVARSThreshold", "--dvars-thresh"),
    "min_coverage": ("MinCoverage", "--min-coverage"),
    "dummy_scans": ("DummyScans", "--dummy-scans"),
}
_SPACE = ("Space", "--space")


def _key_and_option(field: str) -> tuple[str, str]:
    if field in _KNOWN:
        return _KNOWN[field]
    return "".join(part.capitalize() for part in field.split("_")), "--" + field.replace("_", "-")


def participant_settings(cleaning: CleaningSettings, space: str) -> dict[str, Any]:
    """The settings of one call as the record holds them: sidecar key -> value, then ``Space``."""
    record = {_key_and_option(name)[0]: value for name, value in cleaning.to_dict().items()}
    record[_SPACE[0]] = space
    return record


def space_of(runs: list) -> str:
    """The space of the selected runs' series (a run's ``space``; the template where runs carry none)."""
    spaces = sorted({str(getattr(run, "space", None) or TEMPLATE_SPACE) for run in runs})
    return "+".join(spaces)


def _options() -> dict[str, str]:
    """Record key -> how the refusal names it."""
    from dataclasses import fields

    named = dict(_key_and_option(f.name) for f in fields(CleaningSettings))
    return {**named, _SPACE[0]: _SPACE[1]}


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def check_output_settings(output_dir: Path, cleaning: CleaningSettings, space: str) -> dict[str, Any]:
    """Refuse a call whose settings differ from those OUTPUT_DIR's series were made with.

    Call it before anything is written (docs/usage.md, "One configuration per OUTPUT_DIR").

    Parameters
    ----------
    output_dir
        OUTPUT_DIR.
    cleaning, space
        This call's settings and the space of its series.

    Returns
    -------
    dict
        :func:`participant_settings` of this call, for :func:`record_output_settings`.

    Raises
    ------
    UsageError
        Naming each differing setting with the value in OUTPUT_DIR and this call's, where the
        former is recorded, and the fix (exit 64).
    DataError
        The record is not a JSON object with a ``Settings`` object (edited by hand).
    """
    settings = participant_settings(cleaning, space)
    for recorded, where in recorded_settings(output_dir):
        differing = _differences(recorded, settings)
        if differing:
            raise UsageError(
                f"OUTPUT_DIR {output_dir} holds series made with other participant settings "
                f"({'; '.join(differing)}; read from {where}): one OUTPUT_DIR holds one configuration, "
                "so repeat those settings, or write into another OUTPUT_DIR."
            )
    return settings


def _differences(recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``<option> <value there> there, <value now> now`` for each setting that differs."""
    options = _options()
    keys = [*settings, *(key for key in recorded if key not in settings)]
    shown = []
    for key in keys:
        there, now = recorded.get(key, NOT_RECORDED), settings.get(key, NOT_RECORDED)
        if there != now:
            shown.append(f"{options.get(key, key)} {_shown(there)} there, {_shown(now)} now")
    return shown


def recorded_settings(output_dir: Path) -> list[tuple[dict[str, Any], str]]:
    """The settings OUTPUT_DIR's series were made with, each with where it was read.

    One entry from the record; without one (an OUTPUT_DIR of an older neurossm-app), one per
    distinct way its series' sidecars say they were made; none for a new OUTPUT_DIR.
    """
    path = output_dir / RECORD_NAME
    if path.exists():
        return [(_read_record(path), str(path))]
    return _settings_from_sidecars(output_dir)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        content = err
    if not isinstance(content, dict) or not isinstance(content.get("Settings"), dict):
        raise DataError(
            f"{path} is not a settings record (a JSON object with 'Settings'); restore it, or delete it "
            "to have the settings read back from the sidecars of the series."
        )
    return content["Settings"]


def _settings_from_sidecars(output_dir: Path) -> list[tuple[dict[str, Any], str]]:
    """Each distinct set of settings the series' sidecars record, with the first sidecar of it.

    ``Space`` is the file name's ``space-`` entity; a key a sidecar lacks is :data:`NOT_RECORDED`.
    A sidecar that does not parse marks no complete run and is skipped.
    """
    keys = list(_options())
    seen: list[tuple[dict[str, Any], str]] = []
    for sidecar in sorted(output_dir.glob("sub-*/**/*_stat-mean_timeseries.json")):
        try:
            content = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(content, dict):
            continue
        space = re.search(r"_space-([A-Za-z0-9]+)_", sidecar.name)
        content[_SPACE[0]] = space.group(1) if space else NOT_RECORDED
        made = {key: content.get(key, NOT_RECORDED) for key in keys}
        if all(made != other for other, _ in seen):
            seen.append((made, f"the sidecar {sidecar.relative_to(output_dir)}"))
    return seen


def record_output_settings(output_dir: Path, settings: dict[str, Any]) -> Path:
    """Write the record once (call it once a run is written); an existing one is left alone."""
    path = output_dir / RECORD_NAME
    if path.exists():
        return path
    return write_json(
        path,
        {
            "Description": "Participant-level settings every series in this OUTPUT_DIR was made with "
            "(one configuration per OUTPUT_DIR; atlases may be several). neurossm-app refuses a "
            "participant call with other settings.",
            "GeneratedBy": [{"Name": "neurossm-app", "Version": __version__}],
            "Settings": settings,
        },
    )
