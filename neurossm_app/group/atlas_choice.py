"""Which atlas's series a group run reads: ``--atlas`` among the atlases present in OUTPUT_DIR.

A preset names its default atlas only (Schaefer-400 for the HCP presets, AAL3v2 for PPMI): the
group level trains on any atlas and any ROI count. ``--atlas`` takes what the participant level
took (a registry key, a label image path, an atlas-dataset label) or the ``atlas-`` label of the
files itself; without it the preset's atlas is used when OUTPUT_DIR has its series, else the only
atlas present. An absent or ambiguous choice is one line listing the atlases present.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from neurossm_app.atlases import ATLASES, atlas_label
from neurossm_app.errors import InputMissingError, UsageError

LOGGER = logging.getLogger("neurossm_app")

_SERIES = re.compile(r"_atlas-([A-Za-z0-9]+)_(?:[a-z]+-[A-Za-z0-9]+_)*stat-mean_timeseries\.tsv$")


def present_atlases(output_dir: Path) -> list[str]:
    """The ``atlas-`` labels of the participant-level series in OUTPUT_DIR, sorted (a listing only:
    the series themselves are selected with pybids, :func:`~neurossm_app.group.data.select_timeseries`)."""
    if not Path(output_dir).is_dir():
        return []
    found = set()
    for pattern in ("sub-*/func/*_timeseries.tsv", "sub-*/ses-*/func/*_timeseries.tsv"):
        for path in Path(output_dir).glob(pattern):
            match = _SERIES.search(path.name)
            if match:
                found.add(match.group(1))
    return sorted(found)


def requested_label(value: str) -> str:
    """The ``atlas-`` label an ``--atlas`` value stands for (see the module docstring)."""
    from neurossm_app.custom_atlas import VARIANT_ENTITIES, _looks_like_path, derived_label

    if value in ATLASES:
        return atlas_label(value)
    if _looks_like_path(value):
        return derived_label(Path(value))
    head, *narrowing = value.removeprefix("atlas-").split("_")
    entities = dict(part.split("-", 1) for part in narrowing if "-" in part)
    text = head + "".join(entities.get(k, "") for k in VARIANT_ENTITIES)
    return "".join(ch for ch in text if ch.isascii() and ch.isalnum())


def _as_setting(label: str) -> str:
    """A registry key for a registry atlas's label (so maps find its image), else the label."""
    return next((key for key, spec in ATLASES.items() if spec.bids_label == label), label)


def choose_atlas(requested: str | None, default: str, present: list[str], output_dir: Path) -> str:
    """The ``atlas`` group setting: a registry key or an ``atlas-`` label present in OUTPUT_DIR.

    Parameters
    ----------
    requested
        ``--atlas`` (or ``--atlas-label``), ``None`` when not given.
    default
        The preset's atlas key.
    present
        :func:`present_atlases` of OUTPUT_DIR; empty: ``requested or default`` is returned and the
        selection reports what is missing.

    Raises
    ------
    InputMissingError
        ``requested`` has no series in OUTPUT_DIR (exit 66).
    UsageError
        Nothing requested, the preset's atlas absent and several atlases present (exit 64).
    """
    shown = ", ".join(present)
    if not present:
        return requested or default
    if requested is not None:
        label = requested_label(requested)
        if label not in present:
            given = "" if label == requested else f" (--atlas {requested})"
            raise InputMissingError(
                f"no time series for atlas {label}{given} in {output_dir} (found atlas {shown}); pass "
                "--atlas with one of them, or run the participant level with this atlas."
            )
        return requested if requested in ATLASES else _as_setting(label)
    if atlas_label(default) in present:
        return default
    if len(present) == 1:
        LOGGER.info(
            "OUTPUT_DIR has no series of the preset's atlas %s; using the only atlas present, %s",
            atlas_label(default), present[0],
        )  # fmt: skip
        return _as_setting(present[0])
    raise UsageError(
        f"{output_dir} has series of several atlases ({shown}) and none of the preset's "
        f"({atlas_label(default)}); pick one with --atlas (e.g. --atlas {present[0]})."
    )


def atlas_of_series(output_dir: Path, label: str):
    """The custom atlas (image and table) the series of ``label`` were made with, for the maps of
    ``--analysis``: the ``AtlasFile`` of their first sidecar, through OUTPUT_DIR's
    ``DatasetLinks``, read as the participant level read it.

    Raises
    ------
    InputMissingError
        No sidecar of the atlas, or its image is no longer where the sidecar says (exit 66).
    """
    import json

    from neurossm_app.bids import dataset_links, resolve_bids_uri
    from neurossm_app.custom_atlas import load_file_atlas

    sidecars = sorted(Path(output_dir).glob(f"sub-*/**/*_atlas-{label}_*stat-mean_timeseries.json"))
    try:
        sidecar = json.loads(sidecars[0].read_text())
        uri, space = str(sidecar["AtlasFile"]), str(sidecar["Space"])
    except (IndexError, OSError, ValueError, KeyError, TypeError):
        raise InputMissingError(
            f"no readable sidecar of atlas {label} in {output_dir} says which image its series were "
            "made with; --analysis draws its maps on that image: re-run the participant level."
        ) from None
    image = resolve_bids_uri(uri, dataset_links(output_dir))
    if image is None or not image.is_file():
        raise InputMissingError(
            f"the atlas image of {label}, {uri} ({sidecars[0].name}), is not there; --analysis draws "
            "its maps on it: put it back, or fix DatasetLinks in OUTPUT_DIR/dataset_description.json."
        )
    return load_file_atlas(image, space)
