"""A small Neurosynth-format database whose class terms point at the planted ROIs.

``write_neurosynth_database(directory, truth)`` writes exactly the four files NiMARE's
``fetch_neurosynth(data_dir=directory, version="7", source="abstract", vocab="terms")`` leaves
in ``directory/neurosynth/`` (see :data:`neurossm_app.fetch.NEUROSYNTH_FILES`), so
``neurossm-app ... group --analysis --neurosynth-dir directory`` runs offline on it:

- ``data-neurosynth_version-7_coordinates.tsv.gz``: ``id table_id table_num peak_id x y z`` (MNI mm);
- ``data-neurosynth_version-7_metadata.tsv.gz``: ``id doi space title authors year journal``;
- ``..._vocab-terms_source-abstract_type-tfidf_features.npz``: scipy sparse studies x terms TF-IDF,
  rows in metadata order;
- ``..._vocab-terms_vocabulary.txt``: one term per line, the feature columns.

Studies: for every class with a planted effect and a Neurosynth term (the tables of
``neurossm_app/data/neurosynth/class_terms.json``: task classes, ``parkinson`` for PD),
``studies_per_term`` studies report foci at the planted Schaefer parcels (the parcel voxel
nearest its centroid, jittered by 2 mm) plus one or two random cortical foci, with TF-IDF 0.02-0.2
for the term; ``n_background`` studies report random cortical foci and filler terms (a few
mention a class term below the 0.001 threshold). The geometry is that of the synthetic atlas.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurossm_app.files import atomic_path

#: Terms with no planted effect, so the vocabulary is not only the class terms.
FILLER_TERMS = ("attention", "memory", "visual", "pain", "reward", "auditory", "face", "default mode")
#: Preset whose class -> term table applies to each truth target.
_TARGET_PRESET = {"task": "hcp-task", "group": "ppmi", "sex": "hcp-rest"}


def class_term_foci(truth: dict[str, Any], atlas: str = "schaefer400") -> dict[str, np.ndarray]:
    """Term -> MNI coordinates (mm) of its planted parcels, (K, 3), from the truth record."""
    from neurossm_app.group.neurosynth import preset_term_tables
    from neurossm_app.synthetic.atlas import build_atlas_volumes, schaefer_names

    volumes = build_atlas_volumes()
    index_of = {name: i + 1 for i, name in enumerate(schaefer_names(atlas))}
    tables = preset_term_tables()
    foci: dict[str, np.ndarray] = {}
    for target, classes in truth["atlases"][atlas]["targets"].items():
        terms = tables.get(_TARGET_PRESET.get(target, ""), {}).get("terms", {})
        for label, effect in classes.items():
            term = terms.get(label)
            if not term:
                continue
            points = [
                _parcel_point(volumes.schaefer, volumes.grid.affine, index_of[r]) for r in effect["rois"]
            ]
            foci[term] = np.array(points)
    return foci


def _parcel_point(labels: np.ndarray, affine: np.ndarray, parcel: int) -> np.ndarray:
    """The voxel of ``parcel`` nearest its centroid, in mm (inside the parcel even when it is curved)."""
    ijk = np.argwhere(labels == parcel)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return xyz[np.argmin(((xyz - xyz.mean(0)) ** 2).sum(1))]


def write_neurosynth_database(
    directory: str | Path,
    truth: dict[str, Any],
    seed: int = 0,
    studies_per_term: int = 40,
    n_background: int = 160,
) -> list[Path]:
    """Write the four Neurosynth files into ``directory/neurosynth``.

    Parameters
    ----------
    directory : str or Path
        Becomes a ``--neurosynth-dir``.
    truth : dict
        The ``sourcedata/synthetic_truth.json`` record (:func:`neurossm_app.synthetic.effects.truth_record`).
    seed : int
    studies_per_term, n_background : int

    Returns
    -------
    list of Path
        Coordinates, metadata, features, vocabulary.
    """
    from neurossm_app.fetch import neurosynth_files
    from neurossm_app.synthetic.atlas import build_atlas_volumes

    rng = np.random.default_rng([seed, 7])
    foci = class_term_foci(truth)
    volumes = build_atlas_volumes()
    cortex = np.argwhere(volumes.schaefer > 0) @ volumes.grid.affine[:3, :3].T + volumes.grid.affine[:3, 3]
    vocabulary = sorted(set(foci) | set(FILLER_TERMS))
    studies = _draw_studies(rng, foci, cortex, studies_per_term, n_background)
    ids = [str(30000001 + i) for i in range(len(studies))]
    files = neurosynth_files(Path(directory))
    tables = _coordinates(ids, studies), _metadata(ids, studies)
    _write_database(files, *tables, _features(studies, vocabulary))
    with atomic_path(files[3]) as tmp:
        tmp.write_text("\n".join(vocabulary) + "\n")
    return files


Study = tuple[np.ndarray, dict[str, float]]  # (foci (n, 3) in mm, term -> TF-IDF)


def _draw_studies(
    rng: np.random.Generator,
    foci: dict[str, np.ndarray],
    cortex: np.ndarray,
    studies_per_term: int,
    n_background: int,
) -> list[Study]:
    """Studies of each class term (foci near its planted parcels) and background studies, shuffled."""
    studies: list[Study] = []
    for term, points in foci.items():
        for _ in range(studies_per_term):
            k = int(rng.integers(3, min(6, len(points)) + 1))
            chosen = points[rng.choice(len(points), size=k, replace=False)] + rng.normal(0, 2.0, (k, 3))
            extra = cortex[rng.choice(len(cortex), size=int(rng.integers(1, 3)))]
            tfidf = {term: float(rng.uniform(0.02, 0.2))}
            tfidf |= {str(t): float(rng.uniform(0.01, 0.1)) for t in rng.choice(FILLER_TERMS, size=1)}
            studies.append((np.vstack([chosen, extra]), tfidf))
    class_terms = sorted(foci)
    for index in range(n_background):
        points = cortex[rng.choice(len(cortex), size=int(rng.integers(4, 11)))]
        tfidf = {
            str(t): float(rng.uniform(0.01, 0.2)) for t in rng.choice(FILLER_TERMS, size=2, replace=False)
        }
        if class_terms and index % 10 == 0:  # mentions a class term, below the 0.001 threshold
            tfidf[class_terms[index // 10 % len(class_terms)]] = 0.0005
        studies.append((points, tfidf))
    order = rng.permutation(len(studies))
    return [studies[i] for i in order]


def _coordinates(ids: list[str], studies: list[Study]) -> pd.DataFrame:
    """Neurosynth's coordinates table: one row per focus."""
    coordinates, peak = [], 1
    for study_id, (points, _) in zip(ids, studies, strict=True):
        for x, y, z in np.round(points, 1):
            coordinates.append((study_id, int(study_id) % 100000, 1.0, peak, x, y, z))
            peak += 1
    return pd.DataFrame(coordinates, columns=["id", "table_id", "table_num", "peak_id", "x", "y", "z"])


def _metadata(ids: list[str], studies: list[Study]) -> pd.DataFrame:
    """Neurosynth's metadata table: one row per study."""
    return pd.DataFrame(
        {
            "id": ids,
            "doi": "n/a",
            "space": "MNI",
            "title": [
                f"Synthetic study {i} ({', '.join(sorted(t))})"
                for i, (_, t) in zip(ids, studies, strict=True)
            ],
            "authors": "neurossm-synth",
            "year": 2024,
            "journal": "Synthetic",
        }
    )


def _features(studies: list[Study], vocabulary: list[str]):
    """The (studies, terms) sparse TF-IDF matrix."""
    from scipy import sparse

    column = {term: k for k, term in enumerate(vocabulary)}
    rows, cols, values = [], [], []
    for row, (_, tfidf) in enumerate(studies):
        for term, value in tfidf.items():
            rows.append(row)
            cols.append(column[term])
            values.append(value)
    return sparse.csc_matrix((values, (rows, cols)), shape=(len(studies), len(vocabulary)))


def _write_database(files: list[Path], coords: pd.DataFrame, metadata: pd.DataFrame, features) -> None:
    """Coordinates and metadata as reproducible .tsv.gz, features as .npz (fixed zip dates)."""
    from scipy import sparse

    files[0].parent.mkdir(parents=True, exist_ok=True)
    for frame, path in ((coords, files[0]), (metadata, files[1])):
        text = frame.to_csv(sep="\t", index=False, lineterminator="\n").encode()
        with atomic_path(path) as tmp, open(tmp, "wb") as raw:
            # mtime=0 and no file name in the header: the same seed gives the same bytes
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as handle:
                handle.write(text)
    with atomic_path(files[2]) as tmp:
        sparse.save_npz(tmp, features, compressed=True)
        _fix_zip_timestamps(tmp)


def _fix_zip_timestamps(path: Path) -> None:
    """Rewrite a zip (an ``.npz``) with every member dated 1980-01-01, for reproducible bytes."""
    import zipfile

    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, payload in members:
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            target.writestr(fixed, payload)
