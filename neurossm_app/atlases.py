"""Atlas registry: Schaefer2018 at every resolution TemplateFlow offers, and AAL3v2 (nilearn).

Atlases are read from the caches the ecosystem's fetchers fill, by their file names there
(:func:`atlas_files`): TemplateFlow's ``TEMPLATEFLOW_HOME`` and nilearn's data directories
(``--atlas-dir``, else ``NILEARN_SHARED_DATA``, ``NILEARN_DATA``, ``~/nilearn_data``).
Schaefer2018 comes from the TemplateFlow template of the BOLD runs' space (``MNI152NLin2009cAsym``
or ``MNI152NLin6Asym``, :data:`SPACES`); AAL3v2 is defined in MNI (Colin27) space and is used as
it is in both.
``neurossm-app`` never downloads: a missing atlas is one clear error (exit 66) naming the file and
the ``neurossm-app-fetch`` command that provides it (:mod:`neurossm_app.fetch`, the only place
that downloads). Atlases users bring (a label image with its TSV, or a BIDS atlas dataset) are
read by :mod:`neurossm_app.custom_atlas`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd

from neurossm_app.bids import TEMPLATE_SPACE
from neurossm_app.errors import DataError, InputMissingError, UsageError
from neurossm_app.files import is_present
from neurossm_app.fmriprep import CIFTI_SPACE, SPACES

TEMPLATE = TEMPLATE_SPACE  # the default space; Schaefer is read from the template of the BOLD space
#: TemplateFlow ``res-`` of the Schaefer volume the participant level reads.
RUNTIME_RESOLUTION = 2


@dataclass(frozen=True)
class AtlasSpec:
    """How to find one atlas."""

    key: str  # the --atlas choice
    bids_label: str  # the atlas-<label> entity of outputs
    source: str  # "templateflow", "nilearn", "file" (a label image) or "dataset" (a BIDS atlas dataset)
    desc: str | None = None  # TemplateFlow desc entity
    citation: str = ""


SCHAEFER_CITATION = (
    "Schaefer A, et al. (2018). Local-Global Parcellation of the Human Cerebral Cortex from "
    "Intrinsic Functional Connectivity MRI. Cereb Cortex 28(9):3095-3114."
)
#: Parcel counts of the Schaefer-2018 atlases TemplateFlow offers (7 and 17 networks each).
SCHAEFER_PARCELS = tuple(range(100, 1001, 100))


def _schaefer(parcels: int, networks: int) -> AtlasSpec:
    """``schaefer<N>`` (17 networks) or ``schaefer<N>-7n``: TemplateFlow's ``desc-<N>Parcels<K>Networks``."""
    key = f"schaefer{parcels}" + ("-7n" if networks == 7 else "")
    return AtlasSpec(
        key, f"Schaefer{parcels}n{networks}", "templateflow", f"{parcels}Parcels{networks}Networks",
        SCHAEFER_CITATION,
    )  # fmt: skip


AAL3V2 = AtlasSpec(
    "aal3v2",
    "AAL3v2",
    "nilearn",
    None,
    "Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling "
    "atlas 3. NeuroImage 206:116189.",
)
#: The atlases of the presets and the container (``neurossm-app-fetch --atlas all``), whose label
#: tables the package ships (:func:`roi_names`).
DEFAULT_ATLASES = ("schaefer400", "schaefer400-7n", "aal3v2")
#: Every ``--atlas`` key: the defaults first, then Schaefer-2018 at every other resolution.
ATLASES = {
    "schaefer400": _schaefer(400, 17),
    "schaefer400-7n": _schaefer(400, 7),
    "aal3v2": AAL3V2,
    **{
        spec.key: spec
        for parcels in SCHAEFER_PARCELS
        if parcels != 400
        for spec in (_schaefer(parcels, 17), _schaefer(parcels, 7))
    },
}


def atlas_label(atlas: str) -> str:
    """The ``atlas-`` entity of ``atlas``: an :data:`ATLASES` key's label, else ``atlas`` itself
    (the label of an atlas given as a file or from an atlas dataset)."""
    return ATLASES[atlas].bids_label if atlas in ATLASES else atlas


@dataclass(frozen=True)
class Atlas:
    """A resolved atlas: a label image in ``space`` and its label table.

    ``indices[i]`` is the integer value of ROI ``names[i]`` in ``image``. ``root`` is the cache
    the image was read from (TemplateFlow's home, or the nilearn data directory), so that
    sidecars can name the image by a BIDS URI (:attr:`uri`) relative to it.
    """

    spec: AtlasSpec
    image: Path
    indices: tuple[int, ...]
    names: tuple[str, ...]
    space: str = TEMPLATE
    root: Path | None = None
    link_name: str | None = None  # the -d name of an atlas dataset (its DatasetLinks name)
    labels_file: Path | None = None  # the label table the names came from

    @property
    def n_rois(self) -> int:
        """Number of ROIs in the label table."""
        return len(self.names)

    @property
    def link(self) -> str:
        """``DatasetLinks`` name of :attr:`root`: ``templateflow``, ``nilearn`` or the ``-d`` name
        of the atlas dataset."""
        return self.link_name or self.spec.source

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the label image's bytes (read once), for the sidecars."""
        digest = hashlib.sha256()
        with open(self.image, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def provenance(self) -> dict[str, str]:
        """The sidecar fields that say where the atlas came from (besides ``AtlasFile``)."""
        where = {
            "templateflow": f"TemplateFlow tpl-{self.space}",
            "nilearn": "nilearn fetch_atlas_aal(version='3v2')",
            "dataset": f"BIDS atlas dataset -d {self.link}",
            "file": "label image given to --atlas",
        }[self.spec.source]
        return {"AtlasSource": where, "AtlasSHA256": self.sha256}

    @property
    def uri(self) -> str:
        """``bids:templateflow:tpl-.../...`` or ``bids:nilearn:aal_3v2/...`` (the path if no root)."""
        if self.root is None:
            return str(self.image)
        return f"bids:{self.link}:{self.image.relative_to(self.root).as_posix()}"


def atlas_files(
    key: str,
    templateflow_home: Path,
    nilearn_data: Path,
    resolutions: tuple[int, ...] = (RUNTIME_RESOLUTION,),
    space: str = TEMPLATE,
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
    space
        TemplateFlow template of the Schaefer files (:data:`SPACES`; ignored for AAL3v2).

    Returns
    -------
    list of Path
        Label volume(s) first, then the label table.
    """
    spec = ATLASES[key]
    if spec.source == "templateflow" and space == CIFTI_SPACE:  # one dlabel holds image and labels
        return [Path(templateflow_home) / f"tpl-{space}" / fslr_dlabel_name(spec.desc)]
    if spec.source == "templateflow":
        folder = Path(templateflow_home) / f"tpl-{space}"
        stem = f"atlas-Schaefer2018_desc-{spec.desc}_dseg"
        volumes = [folder / f"tpl-{space}_res-{res:02d}_{stem}.nii.gz" for res in resolutions]
        return [*volumes, folder / f"tpl-{space}_{stem}.tsv"]
    folder = Path(nilearn_data) / "aal_3v2" / "AAL3"
    return [folder / "AAL3v1.nii", folder / "AAL3v1.xml"]


def fslr_dlabel_name(desc: str) -> str:
    """TemplateFlow's fsLR Schaefer-2018 file (``--space fsLR``), e.g.
    ``tpl-fsLR_atlas-Schaefer2018_den-32k_desc-400Parcels17Networks_dseg.dlabel.nii``."""
    return f"tpl-{CIFTI_SPACE}_atlas-Schaefer2018_den-32k_desc-{desc}_dseg.dlabel.nii"


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
    """ROI names of atlas ``key`` (one of :data:`DEFAULT_ATLASES`) in label order, without
    fetching the atlas."""
    if key not in DEFAULT_ATLASES:
        raise UsageError(
            f"atlas {key!r} has no packaged label table; choose one of {', '.join(DEFAULT_ATLASES)}."
        )
    spec = ATLASES[key]
    if spec.source == "templateflow":
        table = packaged_table(f"tpl-{TEMPLATE}_atlas-Schaefer2018_desc-{spec.desc}_dseg.tsv")
    else:
        table = packaged_table("aal3v1_regions.tsv")
    return tuple(table.sort_values("index")["name"].astype(str))


def atlas_choices() -> str:
    """The registry keys, shortened for messages: ``schaefer<N>[-7n] (N = 100, ..., 1000), aal3v2``."""
    return "schaefer<N> or schaefer<N>-7n (N = 100, 200, ..., 1000), aal3v2"


def default_templateflow_home() -> Path:
    """``TEMPLATEFLOW_HOME``, else TemplateFlow's own default (the user cache directory)."""
    if os.environ.get("TEMPLATEFLOW_HOME"):
        return Path(os.environ["TEMPLATEFLOW_HOME"]).expanduser()
    from platformdirs import user_cache_dir  # templateflow's own default; importing it is cheap

    return Path(user_cache_dir("templateflow"))


def nilearn_data_dirs(atlas_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where nilearn looks for its data, in its order: ``atlas_dir`` alone when given, else
    ``NILEARN_SHARED_DATA``, ``NILEARN_DATA`` (``os.pathsep``-separated lists), ``~/nilearn_data``."""
    if atlas_dir:
        return [Path(atlas_dir).expanduser()]
    found = []
    for var in ("NILEARN_SHARED_DATA", "NILEARN_DATA"):
        found += [Path(p).expanduser() for p in os.environ.get(var, "").split(os.pathsep) if p]
    return [*found, Path.home() / "nilearn_data"]


def get_atlas(key: str, atlas_dir: str | os.PathLike | None = None, space: str = TEMPLATE) -> Atlas:
    """Resolve ``key`` (a :data:`ATLASES` key) to files in the local caches; never downloads.

    Parameters
    ----------
    key
        ``schaefer<N>`` (17 networks) or ``schaefer<N>-7n`` (N = 100, 200, ... 1000), or ``aal3v2``.
    atlas_dir
        nilearn data directory for AAL3v2 (default: :func:`nilearn_data_dirs`).
    space
        The BOLD runs' template space (:data:`SPACES`): Schaefer is read from that template;
        AAL3v2 (MNI Colin27) is the same file in both.

    Raises
    ------
    InputMissingError
        The atlas is not in the cache (exit 66); the message gives the ``neurossm-app-fetch``
        command that puts it there.
    """
    if key not in ATLASES:
        raise UsageError(f"unknown atlas {key!r}; choose one of {', '.join(ATLASES)}.")
    spec = ATLASES[key]
    if space not in (*SPACES, CIFTI_SPACE):
        raise UsageError(f"unknown space {space!r}; choose one of {', '.join((*SPACES, CIFTI_SPACE))}.")
    if space == CIFTI_SPACE and spec.source != "templateflow":
        raise UsageError(
            f"atlas {key} is a volume; --space {CIFTI_SPACE} (CIFTI grayordinates) takes a Schaefer "
            "atlas (TemplateFlow's fsLR dlabel)."
        )
    if spec.source == "templateflow":
        return _templateflow_atlas(spec, default_templateflow_home(), space)
    return _nilearn_aal(spec, atlas_dir, space)


def _fetch_command(spec: AtlasSpec, where: str) -> str:
    return (
        f"fetch it with `neurossm-app-fetch --atlas {spec.key} {where}` on a machine with internet "
        "(neurossm-app never downloads at run time)"
    )


def _templateflow_atlas(spec: AtlasSpec, home: Path, space: str) -> Atlas:
    """The Schaefer volume and label table of ``space``, read from ``TEMPLATEFLOW_HOME`` by name."""
    if space == CIFTI_SPACE:
        return _fslr_atlas(spec, home)
    image, table = atlas_files(spec.key, home, Path(), space=space)
    absent = [p for p in (image, table) if not is_present(p)]
    if absent:
        what = image.name if image in absent else f"the label table {table.name}"
        also = " (and its .tsv label table)" if len(absent) == 2 else ""
        raise InputMissingError(
            f"atlas {what}{also} not found in TEMPLATEFLOW_HOME={home}; "
            f"{_fetch_command(spec, f'--templateflow-home {home}')}."
        )
    labels = pd.read_csv(table, sep="\t")
    if {"index", "name"} <= set(labels.columns):
        indices, names = labels["index"], labels["name"]
    else:
        indices, names = labels.iloc[:, 0], labels.iloc[:, 1]
    keep = indices.astype(int) != 0
    indices, names = tuple(indices[keep].astype(int)), tuple(names[keep].astype(str))
    return Atlas(spec, image, indices, names, space=space, root=home)


def _fslr_atlas(spec: AtlasSpec, home: Path) -> Atlas:
    """The fsLR 32k dlabel of a Schaefer atlas; its label table is the dlabel's own."""
    from neurossm_app.cifti import dlabel_table

    (image,) = atlas_files(spec.key, home, Path(), space=CIFTI_SPACE)
    if not is_present(image):
        raise InputMissingError(
            f"atlas {image.name} not found in TEMPLATEFLOW_HOME={home}; "
            f"{_fetch_command(spec, f'--templateflow-home {home}')}."
        )
    indices, names = dlabel_table(image)
    return Atlas(spec, image, indices, names, space=CIFTI_SPACE, root=home)


def _nilearn_aal(spec: AtlasSpec, atlas_dir: str | os.PathLike | None, space: str = TEMPLATE) -> Atlas:
    """AAL3v2 from the first nilearn data directory that holds it, read as nilearn reads it."""
    candidates = nilearn_data_dirs(atlas_dir)
    for data_dir in candidates:
        image, labels = atlas_files(spec.key, Path(), data_dir)
        if is_present(image) and is_present(labels):
            break
    else:
        where = ", ".join(str(d) for d in candidates)
        raise InputMissingError(
            f"atlas aal_3v2/AAL3/AAL3v1.nii (and AAL3v1.xml) not found under {where}; "
            f"{_fetch_command(spec, f'--nilearn-data {candidates[0]}')}, then pass --atlas-dir "
            f"{candidates[0]} or set NILEARN_DATA."
        )
    try:
        # nilearn.datasets.fetch_atlas_aal's reading of the label file (it would download a missing one).
        root = ElementTree.parse(labels).getroot()
        pairs = [(int(item.find("index").text), str(item.find("name").text)) for item in root.iter("label")]
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DataError(
            f"{labels} is not an AAL label file ({type(err).__name__}); delete {labels.parent} and "
            f"{_fetch_command(spec, f'--nilearn-data {data_dir}')}."
        ) from None
    pairs = [(i, n) for i, n in pairs if i != 0]
    indices, names = tuple(i for i, _ in pairs), tuple(n for _, n in pairs)
    return Atlas(spec, image, indices, names, space=space, root=data_dir)
