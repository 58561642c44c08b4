"""Atlas registry: Schaefer2018 400 parcels (TemplateFlow) and AAL3v2 (nilearn).

Atlases are looked up through the ecosystem's own fetchers so their caches are honoured:
TemplateFlow reads ``TEMPLATEFLOW_HOME`` (set it before the process starts) and nilearn reads
``--atlas-dir`` or ``NILEARN_DATA``. Nothing is downloaded unless the cache lacks the file and the
network is there; offline, a missing atlas is one clear error naming the file and the pre-fetch
command.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from neurossm_app.bids import TEMPLATE_SPACE
from neurossm_app.errors import InputMissingError, UsageError

TEMPLATE = TEMPLATE_SPACE  # the atlases are resampled from the template of the BOLD space
#: TemplateFlow ``res-`` of the Schaefer volume the participant level reads.
RUNTIME_RESOLUTION = 2


@dataclass(frozen=True)
class AtlasSpec:
    """How to find one atlas."""

    key: str  # the --atlas choice
    bids_label: str  # the atlas-<label> entity of outputs
    source: str  # "templateflow" or "nilearn"
    desc: str | None = None  # TemplateFlow desc entity
    citation: str = ""


ATLASES = {
    "schaefer400": AtlasSpec(
        "schaefer400",
        "Schaefer400n17",
        "templateflow",
        "400Parcels17Networks",
        "Schaefer A, et al. (2018). Local-Global Parcellation of the Human Cerebral Cortex from "
        "Intrinsic Functional Connectivity MRI. Cereb Cortex 28(9):3095-3114.",
    ),
    "schaefer400-7n": AtlasSpec(
        "schaefer400-7n",
        "Schaefer400n7",
        "templateflow",
        "400Parcels7Networks",
        "Schaefer A, et al. (2018). Local-Global Parcellation of the Human Cerebral Cortex from "
        "Intrinsic Functional Connectivity MRI. Cereb Cortex 28(9):3095-3114.",
    ),
    "aal3v2": AtlasSpec(
        "aal3v2",
        "AAL3v2",
        "nilearn",
        None,
        "Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling "
        "atlas 3. NeuroImage 206:116189.",
    ),
}


@dataclass(frozen=True)
class Atlas:
    """A resolved atlas: a label image on the MNI152NLin2009cAsym grid and its label table.

    ``indices[i]`` is the integer value of ROI ``names[i]`` in ``image``.
    """

    spec: AtlasSpec
    image: Path
    indices: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def n_rois(self) -> int:
        """Number of ROIs in the label table."""
        return len(self.names)


def atlas_files(
    key: str,
    templateflow_home: Path,
    nilearn_data: Path,
    resolutions: tuple[int, ...] = (RUNTIME_RESOLUTION,),
) -> list[Path]:
    """The files atlas ``key`` consists of in the local caches.

    Parameters
    ----------
    key
        An :data:`neurossm_app.atlases.ATLASES` key.
    templateflow_home, nilearn_data
        The TemplateFlow home and the nilearn data directory.
    resolutions
        TemplateFlow ``res-`` values of the Schaefer volumes to list (ignored for AAL3v2).

    Returns
    -------
    list of Path
        Label volume(s) first, then the label table.
    """
    spec = ATLASES[key]
    if spec.source == "templateflow":
        folder = Path(templateflow_home) / f"tpl-{TEMPLATE}"
        stem = f"atlas-Schaefer2018_desc-{spec.desc}_dseg"
        volumes = [folder / f"tpl-{TEMPLATE}_res-{res:02d}_{stem}.nii.gz" for res in resolutions]
        return [*volumes, folder / f"tpl-{TEMPLATE}_{stem}.tsv"]
    folder = Path(nilearn_data) / "aal_3v2" / "AAL3"
    return [folder / "AAL3v1.nii", folder / "AAL3v1.xml"]


def packaged_path(name: str) -> Path:
    """Path of a label table shipped in ``neurossm_app/data/atlases/`` (see :func:`packaged_table`)."""
    return Path(str(resources.files("neurossm_app") / "data" / "atlases" / name))


def packaged_table(name: str) -> pd.DataFrame:
    """A label table shipped with the package (``neurossm_app/data/atlases/NAME``).

    The Schaefer tables are TemplateFlow's ``..._dseg.tsv`` files (columns ``index``, ``name``,
    ``color``); ``aal3v1_regions.tsv`` lists AAL3v1's 166 regions (``index``, ``name`` and rough
    MNI centroids). They let code that has no atlas image at hand (legacy import, synthetic data)
    name ROIs exactly as the fetched atlases do.
    """
    return pd.read_csv(packaged_path(name), sep="\t")


def roi_names(key: str) -> tuple[str, ...]:
    """ROI names of atlas ``key`` in label order, without fetching the atlas."""
    if key not in ATLASES:
        raise UsageError(f"unknown atlas {key!r}; choose one of {', '.join(ATLASES)}.")
    spec = ATLASES[key]
    if spec.source == "templateflow":
        table = packaged_table(f"tpl-{TEMPLATE}_atlas-Schaefer2018_desc-{spec.desc}_dseg.tsv")
    else:
        table = packaged_table("aal3v1_regions.tsv")
    return tuple(table.sort_values("index")["name"].astype(str))


def get_atlas(key: str, atlas_dir: str | os.PathLike | None = None) -> Atlas:
    """Resolve ``key`` (a :data:`ATLASES` key) to files in the local caches.

    Parameters
    ----------
    key
        ``schaefer400``, ``schaefer400-7n`` or ``aal3v2``.
    atlas_dir
        nilearn data directory for AAL3v2 (default: ``NILEARN_DATA`` or ``~/nilearn_data``).
    """
    if key not in ATLASES:
        raise UsageError(f"unknown atlas {key!r}; choose one of {', '.join(ATLASES)}.")
    spec = ATLASES[key]
    if spec.source == "templateflow":
        return _templateflow_atlas(spec)
    return _nilearn_aal(spec, atlas_dir)


def _prefetch_hint(spec: AtlasSpec) -> str:
    return f"pre-fetch it with `neurossm-app-fetch --atlas {spec.key}` on a machine with internet"


def _templateflow_atlas(spec: AtlasSpec) -> Atlas:
    home = os.environ.get("TEMPLATEFLOW_HOME", str(Path.home() / ".cache" / "templateflow"))
    wanted = atlas_files(spec.key, Path(home), Path())[0].name
    try:
        from templateflow import api as tflow

        image = tflow.get(
            TEMPLATE,
            resolution=RUNTIME_RESOLUTION,
            atlas="Schaefer2018",
            desc=spec.desc,
            suffix="dseg",
            extension=".nii.gz",
        )
        table = tflow.get(TEMPLATE, atlas="Schaefer2018", desc=spec.desc, suffix="dseg", extension=".tsv")
    except Exception as err:  # noqa: BLE001 - any fetch failure means "not available offline"
        raise InputMissingError(
            f"atlas {wanted} not found in TEMPLATEFLOW_HOME={home} ({type(err).__name__}); "
            f"{_prefetch_hint(spec)}."
        ) from None
    image, table = _single(image), _single(table)
    if image is None or table is None or not image.is_file() or not table.is_file():
        entity = re.search(r"[/_]((?:atlas|desc|res|tpl|cohort|den|label|hemi|space)-[^/_]*)", home)
        if entity:
            raise InputMissingError(
                f"TEMPLATEFLOW_HOME={home} contains '{entity.group(1)}', which TemplateFlow reads as a "
                "BIDS entity, so no atlas matches; move the TemplateFlow folder to a path without it."
            )
        raise InputMissingError(
            f"atlas {wanted} (and its .tsv label table) not found in TEMPLATEFLOW_HOME={home}; "
            f"{_prefetch_hint(spec)}."
        )
    labels = pd.read_csv(table, sep="\t")
    if {"index", "name"} <= set(labels.columns):
        indices, names = labels["index"], labels["name"]
    else:
        indices, names = labels.iloc[:, 0], labels.iloc[:, 1]
    keep = indices.astype(int) != 0
    return Atlas(spec, image, tuple(indices[keep].astype(int)), tuple(names[keep].astype(str)))


def _single(found) -> Path | None:
    if isinstance(found, list):
        return Path(found[0]) if len(found) == 1 else None
    return Path(found) if found else None


def _nilearn_aal(spec: AtlasSpec, atlas_dir: str | os.PathLike | None) -> Atlas:
    from nilearn.datasets import fetch_atlas_aal
    from nilearn.datasets.utils import get_data_dirs

    data_dir = str(atlas_dir) if atlas_dir else None
    where = data_dir or get_data_dirs()[0]
    try:
        # An already-cached file is returned without touching the network.
        atlas = fetch_atlas_aal(version="3v2", data_dir=data_dir, verbose=0)
    except Exception as err:  # noqa: BLE001 - nilearn raises several types for "cannot download"
        raise InputMissingError(
            f"atlas aal_3v2/AAL3/AAL3v1.nii not found under {where} ({type(err).__name__}); "
            f"{_prefetch_hint(spec)}, or pass --atlas-dir."
        ) from None
    pairs = [(int(i), str(n)) for i, n in zip(atlas.indices, atlas.labels, strict=False) if int(i) != 0]
    return Atlas(spec, Path(atlas.maps), tuple(i for i, _ in pairs), tuple(n for _, n in pairs))
