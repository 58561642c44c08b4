"""Atlases users bring: a label image with its TSV, or an atlas in a BIDS atlas dataset.

``--atlas`` takes, besides the registry keys of :mod:`neurossm_app.atlases`:

- a path to an integer label image (``.nii.gz``/``.nii``; for fsLR runs a ``.dlabel.nii``, whose
  own table serves when it has no TSV) with its label table: the same name
  with ``.tsv`` (``parcels.nii.gz`` -> ``parcels.tsv``), else the nearest ``_dseg.tsv`` whose
  entities the image has (``tpl-X_res-02_atlas-A_dseg.nii.gz`` -> ``tpl-X_atlas-A_dseg.tsv``,
  :func:`label_table_of`). The table has the columns ``index`` and ``name`` (XCP-D's ``label``
  is read as ``name``); index 0 is the background;
- the ``atlas-`` label of an atlas in a BIDS atlas dataset given with ``-d atlases=PATH`` (any
  ``-d`` name other than ``fmriprep``): the layout of the bids-examples ``atlas-*`` datasets
  (``tpl-<space>/anat/tpl-<space>_atlas-<A>[_seg-..][_scale-..][_res-..][_desc-..]_dseg.nii.gz``)
  and of XCP-D's atlas datasets (``atlas-<A>/atlas-<A>_space-<space>[_res-..]_dseg.nii.gz``),
  each image with its nearest ``_dseg.tsv``, up to the dataset root. Where one label has several
  images in the runs' space (``seg-``, ``scale-``, ``desc-`` variants), ``--atlas A_scale-156``
  picks one. ``res-2`` is preferred (the runs' resolution), else the finest.

The output label (the ``atlas-`` entity of the participant-level files) is the ``atlas-`` entity
of the image (with the values of the entities that picked the variant), else the file name's
letters and digits; ``--atlas-label`` replaces it.

Every check happens once, before any run: a missing image or table (exit 66); a table without
``index`` and ``name``, an image that is not 3D or holds non-integer values, label values in the
image that the table lacks, an atlas whose ``space-``/``tpl-`` entity is not the runs' space, or
whose labels lie mostly outside the first run's field of view (exit 65).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from neurossm_app.atlases import ATLASES, Atlas, AtlasSpec, atlas_choices, get_atlas
from neurossm_app.errors import DataError, InputMissingError, UsageError
from neurossm_app.fmriprep import CIFTI_SPACE, read_description

LOGGER = logging.getLogger("neurossm_app")

IMAGE_EXTENSIONS = (".dlabel.nii", ".nii.gz", ".nii")
#: Entities that tell the variants of one atlas apart (they join the output label when they pick one).
VARIANT_ENTITIES = ("seg", "scale", "desc")
#: Folders of an atlas dataset that hold no template-space atlas of its own.
_SKIPPED_FOLDERS = re.compile(r"^(sub-|sourcedata$|derivatives$|code$|\.)")


def resolve_atlas(
    value: str | None,
    label: str | None = None,
    datasets: dict[str, Path] | None = None,
    atlas_dir: str | os.PathLike | None = None,
    space: str = "MNI152NLin2009cAsym",
    reference: Path | None = None,
) -> Atlas:
    """The participant level's atlas from ``--atlas`` (``None``: ``schaefer400``).

    Parameters
    ----------
    value
        A registry key, a label image path, or an atlas label of an atlas dataset in ``datasets``.
    label
        ``--atlas-label``: the output label instead of the derived one.
    datasets
        ``-d NAME=PATH`` datasets; every one but ``fmriprep`` is searched for atlas labels.
    atlas_dir
        ``--atlas-dir`` (AAL3v2).
    space
        The runs' template space.
    reference
        A run's BOLD image: a custom atlas must lie mostly inside its field of view
        (:func:`check_overlap`).
    """
    value = value or "schaefer400"
    atlas_datasets = {n: p for n, p in (datasets or {}).items() if n != "fmriprep"}
    if value in ATLASES:
        atlas = get_atlas(value, atlas_dir, space=space)
    elif _looks_like_path(value):
        atlas = load_file_atlas(Path(value).expanduser().absolute(), space)
    elif atlas_datasets:
        atlas = dataset_atlas(atlas_datasets, value, space)
    else:
        raise UsageError(
            f"unknown --atlas {value!r}: give one of {atlas_choices()}, a label image "
            "(.nii.gz with a .tsv of index and name beside it), or an atlas label with "
            "-d atlases=PATH (a BIDS atlas dataset)."
        )
    if label:
        atlas = replace(atlas, spec=replace(atlas.spec, bids_label=label))
    if reference is not None and atlas.spec.source in ("file", "dataset") and atlas.space != CIFTI_SPACE:
        check_overlap(atlas.image, reference)
    return atlas


def _world_box(affine: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world-space (mm) bounding box of the voxel box ``lower``..``upper`` (inclusive)."""
    corners = np.array([[x, y, z, 1.0] for x in (lower[0], upper[0]) for y in (lower[1], upper[1])
                        for z in (lower[2], upper[2])])  # fmt: skip
    world = corners @ np.asarray(affine).T
    return world[:, :3].min(0), world[:, :3].max(0)


def check_overlap(image: Path, reference: Path, minimum: float = 0.5) -> None:
    """Refuse an atlas whose labelled voxels mostly lie outside a run's field of view: an image
    in another space (scanner or native coordinates) that names none.

    Raises
    ------
    DataError
        Less than ``minimum`` of the labels' bounding box (in mm) inside the run's (exit 65).
    """
    import nibabel as nib

    img = nib.load(os.fspath(image))
    labelled = np.argwhere(np.asarray(img.dataobj).reshape(img.shape[:3]) != 0)
    ref = nib.load(os.fspath(reference))
    if labelled.size == 0 or len(ref.shape) < 3:
        return
    lo, hi = _world_box(img.affine, labelled.min(0) - 0.5, labelled.max(0) + 0.5)
    ref_lo, ref_hi = _world_box(ref.affine, np.full(3, -0.5), np.asarray(ref.shape[:3]) - 0.5)
    inside = np.prod(np.clip(np.minimum(hi, ref_hi) - np.maximum(lo, ref_lo), 0, None)) / np.prod(hi - lo)
    if inside < minimum:
        span = f"{np.round(lo).tolist()} to {np.round(hi).tolist()} mm"
        raise DataError(
            f"atlas {image.name} lies {100 * (1 - inside):.0f}% outside the field of view of "
            f"{Path(reference).name} (its labels span {span}); is it in the runs' template space?"
        )


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(IMAGE_EXTENSIONS) or Path(value).exists()


def split_extension(name: str) -> tuple[str, str]:
    """``("tpl-X_atlas-A_dseg", ".nii.gz")``; the extension is ``""`` for other files."""
    for ext in (*IMAGE_EXTENSIONS, ".tsv", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def name_entities(name: str) -> dict[str, str]:
    """The ``key-value`` entities of a file name (the suffix and extension left out)."""
    stem, _ = split_extension(name)
    return dict(part.split("-", 1) for part in stem.split("_") if "-" in part)


def derived_label(image: Path) -> str:
    """Output label of a label image: its ``atlas-`` entity plus the values of its
    :data:`VARIANT_ENTITIES`, else the letters and digits of its name."""
    entities = name_entities(image.name)
    if "atlas" in entities:
        text = entities["atlas"] + "".join(entities.get(k, "") for k in VARIANT_ENTITIES)
    else:
        text = split_extension(image.name)[0]
    return "".join(ch for ch in text if ch.isascii() and ch.isalnum()) or "custom"


def label_table_of(image: Path, root: Path | None = None) -> Path:
    """The label table of ``image``: the same name with ``.tsv``, else the nearest ``_dseg.tsv``
    whose entities the image has (``tpl-X_atlas-A_dseg.tsv`` for ``tpl-X_res-02_atlas-A_dseg.nii.gz``,
    ``atlas-A_dseg.tsv`` for XCP-D's ``atlas-A_space-X_dseg.nii.gz``), looked for in the image's
    folder, then up to ``root`` (an atlas dataset); the one with most entities wins.

    Raises
    ------
    InputMissingError
        None exists (exit 66).
    """
    stem, _ = split_extension(image.name)
    same = image.with_name(stem + ".tsv")
    if same.is_file():
        return same
    entities = set(name_entities(image.name).items())
    folder = image.parent
    while True:
        tables = [
            t for t in sorted(folder.glob("*_dseg.tsv")) if set(name_entities(t.name).items()) <= entities
        ]
        if tables:
            return max(tables, key=lambda t: len(name_entities(t.name)))
        if root is None or folder == root or root not in folder.parents:
            break
        folder = folder.parent
    raise InputMissingError(
        f"the label table of atlas {image} is missing: write {same.name} beside it, "
        "a TSV with the columns index and name (one row per label value)."
    )


def read_label_table(table: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``(indices, names)`` of a label table, background (index 0) left out.

    Raises
    ------
    DataError
        No ``index`` or ``name`` (or ``label``) column, non-integer or repeated indices (exit 65).
    """
    try:
        frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"atlas label table {table} is unreadable ({type(err).__name__}).") from None
    name_column = "name" if "name" in frame.columns else "label" if "label" in frame.columns else None
    if "index" not in frame.columns or name_column is None:
        raise DataError(
            f"atlas label table {table} needs the columns index and name (it has "
            f"{', '.join(map(str, frame.columns)) or 'none'})."
        )
    try:
        indices = [int(v) for v in frame["index"]]
    except ValueError:
        raise DataError(f"atlas label table {table}: the index column must hold integers.") from None
    if len(set(indices)) != len(indices):
        raise DataError(f"atlas label table {table} lists an index twice; each label value once.")
    pairs = [(i, str(n)) for i, n in zip(indices, frame[name_column], strict=True) if i != 0]
    return tuple(i for i, _ in pairs), tuple(n for _, n in pairs)


def check_label_image(image: Path, indices: tuple[int, ...], table: Path) -> None:
    """A 3D image of integer label values, every one of them in the table.

    Raises
    ------
    DataError
        Not 3D, not integer-valued, or values the table lacks (exit 65).
    """
    import nibabel as nib

    try:
        img = nib.load(os.fspath(image))
    except Exception as err:  # noqa: BLE001 - nibabel raises several types for a bad file
        raise DataError(f"atlas {image} is not a NIfTI image nibabel reads ({type(err).__name__}).") from None
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if len(shape) != 3:
        raise DataError(
            f"atlas {image} is {len(img.shape)}D; give a 3D integer label image (a _dseg, not a _probseg)."
        )
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        finite = np.isfinite(data).all()
        if not finite or not np.array_equal(data, np.round(data)):
            raise DataError(
                f"atlas {image} holds non-integer values; give an integer label image (a _dseg), "
                "not a probability or statistical map."
            )
    values = np.unique(data.astype(np.int64))
    values = values[values != 0]
    if values.size and values.min() < 0:
        raise DataError(f"atlas {image} holds negative label values; label values are positive integers.")
    missing = sorted(set(values.tolist()) - set(indices))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} label value(s) of atlas {image} are not in its label table {table.name} "
            f"({shown}); add a row (index, name) for each."
        )


def load_file_atlas(
    image: Path, space: str, source: str = "file", root: Path | None = None, link: str | None = None
) -> Atlas:
    """A label image and the table beside it, checked (see the module docstring).

    ``space`` is the runs' space: an image whose ``space-``/``tpl-`` entity names another is
    refused; one without either is taken to be in ``space``.
    """
    if not image.is_file():
        raise InputMissingError(f"--atlas {image} does not exist; check the path.")
    is_dlabel = image.name.endswith(".dlabel.nii")
    if is_dlabel != (space == CIFTI_SPACE):
        wanted = "a .dlabel.nii (CIFTI) atlas" if space == CIFTI_SPACE else "a NIfTI label image"
        raise DataError(f"atlas {image.name} cannot parcellate runs in {space}: they take {wanted}.")
    entities = name_entities(image.name)
    named = entities.get("space") or entities.get("tpl")
    if named is not None and named != space:
        raise DataError(
            f"atlas {image.name} is in space {named} but the runs are in {space}; give the atlas in "
            f"{space} (or select runs in {named} with --space)."
        )
    if named is None:
        LOGGER.info("atlas %s names no space; taken to be in the runs' space %s", image.name, space)
    if is_dlabel:
        table, (indices, names) = _dlabel_labels(image, root)
    else:
        table = label_table_of(image, root)
        indices, names = read_label_table(table)
        check_label_image(image, indices, table)
    spec = AtlasSpec(str(image), derived_label(image), source)
    return Atlas(spec, image, indices, names, space=space, root=root, link_name=link, labels_file=table)


def _dlabel_labels(image: Path, root: Path | None) -> tuple[Path | None, tuple[tuple, tuple]]:
    """A dlabel's label table: the TSV beside it when there is one (checked against the dlabel's
    values), else the dlabel's own (:func:`neurossm_app.cifti.dlabel_table`)."""
    from neurossm_app.cifti import dlabel_table, load_cifti

    try:
        table = label_table_of(image, root)
    except InputMissingError:
        return None, dlabel_table(image)
    indices, names = read_label_table(table)
    values = np.unique(np.asarray(load_cifti(image, "dlabel").dataobj)[0].astype(np.int64))
    missing = sorted(set(values[values != 0].tolist()) - set(indices))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} label value(s) of atlas {image} are not in its label table {table.name} "
            f"({shown}); add a row (index, name) for each."
        )
    return table, (indices, names)


def dataset_atlas(datasets: dict[str, Path], request: str, space: str) -> Atlas:
    """The atlas ``request`` (``A`` or ``A_key-value...``) of the runs' space in one of ``datasets``.

    Raises
    ------
    InputMissingError
        No dataset has the atlas (exit 66); the message lists the atlases they have.
    DataError
        The atlas exists in other spaces only (exit 65).
    UsageError
        Several variants match (exit 64); the message lists them as ``--atlas`` values.
    """
    wanted_label, *narrowing = request.split("_")
    try:
        wanted = dict(part.split("-", 1) for part in narrowing)
    except ValueError:
        raise UsageError(f"--atlas {request!r}: write an atlas label, then _key-value entities.") from None
    found, other_spaces, labels = [], set(), set()
    for name, root in datasets.items():
        for image in atlas_images(root):
            entities = name_entities(image.name)
            labels.add(entities["atlas"])
            if entities["atlas"] != wanted_label or any(entities.get(k) != v for k, v in wanted.items()):
                continue
            image_space = entities.get("space") or entities.get("tpl")
            if image_space != space:
                other_spaces.add(str(image_space))
                continue
            found.append((name, root, image, entities))
    shown = ", ".join(f"-d {n}={p}" for n, p in datasets.items())
    if not found and other_spaces:
        raise DataError(
            f"atlas {request} in {shown} is in space {', '.join(sorted(other_spaces))} only, but the "
            f"runs are in {space}; add the atlas in {space} to the dataset."
        )
    if not found:
        raise InputMissingError(
            f"no atlas {request} (a _dseg image) in {shown}; "
            f"it has {', '.join(sorted(labels)) or 'no _dseg images'}."
        )
    name, root, image, entities = _pick_resolution(found, request)
    atlas = load_file_atlas(image, space, "dataset", root=root, link=name)
    label = wanted_label + "".join(wanted.get(k, "") for k in VARIANT_ENTITIES)
    label = "".join(ch for ch in label if ch.isascii() and ch.isalnum())
    return replace(atlas, spec=replace(atlas.spec, bids_label=label))


def atlas_images(root: Path) -> list[Path]:
    """The ``atlas-*_dseg`` images (NIfTI, CIFTI dlabel) of an atlas dataset, subject folders and
    sourcedata left out."""
    if not root.is_dir():
        raise InputMissingError(f"atlas dataset {root} does not exist; check -d atlases=PATH.")
    if not read_description(root):
        LOGGER.warning("atlas dataset %s has no dataset_description.json", root)
    images = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if not _SKIPPED_FOLDERS.match(s))
        for file in sorted(files):
            stem, ext = split_extension(file)
            if ext in IMAGE_EXTENSIONS and stem.endswith("_dseg") and "atlas" in name_entities(file):
                images.append(Path(folder) / file)
    return images


def _pick_resolution(found: list[tuple], request: str) -> tuple:
    """One image among the matches: a single variant, ``res-2`` first, else the finest."""
    variants = {tuple((k, e.get(k)) for k in VARIANT_ENTITIES if e.get(k)) for *_, e in found}
    if len(variants) > 1:
        options = sorted(
            request.split("_")[0] + "".join(f"_{k}-{v}" for k, v in variant) for variant in variants
        )
        raise UsageError(f"--atlas {request} matches several atlases; pick one: {', '.join(options)}.")

    def resolution(item) -> tuple[int, float]:
        res = item[3].get("res")
        try:
            value = float(res)
        except (TypeError, ValueError):
            return (1, 0.0)
        return (0 if value == 2 else 1, value)

    return min(found, key=resolution)
