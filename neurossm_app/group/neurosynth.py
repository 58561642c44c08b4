"""Neurosynth reference maps: one NiMARE MKDA chi-square association z-map per class term.

Data: the Neurosynth database (version 7, abstract terms, TF-IDF) as NiMARE's fetcher leaves it
in ``NEUROSYNTH_DIR/neurosynth/`` (:func:`neurossm_app.fetch.fetch_neurosynth`, also what
``neurossm-app-fetch --neurosynth DIR`` and ``neurossm-synth`` write). Nothing is fetched at run
time: a missing file is one clear error (exit 66) naming the directory and the
``neurossm-app-fetch`` command, raised before any unit trains (:func:`~neurossm_app.group.run.load_inputs`).

Per term (design section 8): the studies whose TF-IDF for the term is at least 0.001 (NiMARE's
``Dataset.get_studies_by_label`` rule) against all the other studies,
``nimare.meta.cbma.MKDAChi2`` (MKDA kernel, 10 mm), and its ``z_desc-association`` map (the
"specificity" / reverse-inference map of Neurosynth). Studies are selected from the sparse
feature matrix directly: converting every term of the real database into a NiMARE ``Dataset``
would build a 14,371 x 3,228 dense table for nothing. Coordinates and metadata go through the
real ``nimare.io.convert_neurosynth_to_dataset``. Maps are cached per term as
``NEUROSYNTH_DIR/maps/term-<term>_z.nii.gz`` (+ ``.json`` with the study counts and the database
fingerprint), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.errors import DataError, InputMissingError, OutputError, UsageError
from neurossm_app.files import atomic_path, write_json

LOGGER = logging.getLogger("neurossm_app")

#: TF-IDF threshold for "a study about the term" (Neurosynth's and NiMARE's default).
TFIDF_THRESHOLD = 0.001
#: The MKDAChi2 result used as the reference map.
REFERENCE_MAP = "z_desc-association"
FETCH_COMMAND = "neurossm-app-fetch --atlas none --neurosynth"
CLASS_TERMS_FILE = "class_terms.json"


def default_neurosynth_dir() -> Path:
    """``$NEUROSYNTH_DIR``, else ``~/.cache/neurossm-app/neurosynth``."""
    if os.environ.get("NEUROSYNTH_DIR"):
        return Path(os.environ["NEUROSYNTH_DIR"]).expanduser()
    return Path.home() / ".cache" / "neurossm-app" / "neurosynth"


def term_slug(term: str) -> str:
    """A file-name-safe form of ``term`` (``working memory`` -> ``workingMemory``)."""
    words = re.split(r"[^A-Za-z0-9]+", term.strip())
    words = [w for w in words if w]
    if not words:
        raise UsageError(f"Neurosynth term {term!r} has no letters or digits.")
    return words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])


# --------------------------------------------------------------------------------------------
# Class -> term tables
# --------------------------------------------------------------------------------------------


def preset_term_tables() -> dict[str, dict[str, Any]]:
    """The shipped tables: preset -> ``{"target": ..., "terms": {class: term or None}}``."""
    text = (resources.files("neurossm_app") / "data" / "neurosynth" / CLASS_TERMS_FILE).read_text()
    return json.loads(text)["presets"]


def read_class_terms_file(path: Path) -> dict[str, str | None]:
    """Read a ``--class-terms`` JSON file: ``{"CLASS": "term" or null, ...}``.

    Raises
    ------
    InputMissingError
        The file does not exist.
    DataError
        Not a JSON object of strings or nulls.
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"--class-terms file {path} does not exist.")
    try:
        table = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"--class-terms file {path} is not valid JSON ({err}).") from None
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and (v is None or (isinstance(v, str) and v.strip())) for k, v in table.items()
    ):
        raise DataError(
            f"--class-terms file {path} must be one JSON object mapping class labels to a Neurosynth "
            'term or null, e.g. {"motor": "motor", "wm": "working memory", "rest": null}.'
        )
    return {k: (v.strip() if v else None) for k, v in table.items()}


def resolve_class_terms(
    preset: str, target: str, classes: tuple[str, ...], override: Path | None = None
) -> tuple[dict[str, str | None], str]:
    """The Neurosynth term of every class (``None``: no reference for that class), and its source.

    Parameters
    ----------
    preset, target
        The run's preset and target; the preset's table applies only when the target is the
        one it was written for (``hcp-task`` with ``--target participants:sex`` gets no terms).
    classes
        The run's class labels.
    override
        A ``--class-terms`` file; replaces the preset table entirely.
    """
    if override is not None:
        table = read_class_terms_file(override)
        source = str(override)
    else:
        entry = preset_term_tables().get(preset)
        table = dict(entry["terms"]) if entry and entry["target"] == target else {}
        source = f"the {preset} preset table"
    unknown = sorted(set(table) - set(classes))
    if override is not None and unknown:
        LOGGER.warning("--class-terms lists classes that are not in this run: %s", ", ".join(unknown))
    return {c: table.get(c) for c in classes}, source


# --------------------------------------------------------------------------------------------
# The database on disk
# --------------------------------------------------------------------------------------------


def ensure_neurosynth(directory: Path) -> list[Path]:
    """The Neurosynth files under ``directory/neurosynth``; never downloads.

    Returns
    -------
    list of Path
        Coordinates, metadata, features (``.npz``), vocabulary.

    Raises
    ------
    InputMissingError
        A file is missing or empty (exit 66); the message names the directory, the first missing
        file and the ``neurossm-app-fetch`` command that provides them.
    """
    from neurossm_app.fetch import neurosynth_files
    from neurossm_app.files import is_present

    directory = Path(directory).expanduser().absolute()
    files = neurosynth_files(directory)
    missing = [p for p in files if not is_present(p)]
    if not missing:
        return files
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise InputMissingError(
        f"Neurosynth data not found in {directory} (missing {missing[0].relative_to(directory)}{more}); "
        f"fetch it with `{FETCH_COMMAND} {directory}` on a machine with internet (neurossm-app never "
        "downloads at run time), or pass --neurosynth-dir with a directory that holds it (the container "
        "image has a copy)."
    )


@dataclass
class NeurosynthDatabase:
    """The Neurosynth files of one directory, loaded lazily.

    Attributes
    ----------
    directory : Path
        ``NEUROSYNTH_DIR`` (files in ``directory/neurosynth``).
    files : list of Path
        Coordinates, metadata, features, vocabulary.
    """

    directory: Path
    files: list[Path]
    _dataset: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, directory: Path) -> NeurosynthDatabase:
        """:func:`ensure_neurosynth`, then a lazy handle on the files."""
        directory = Path(directory).expanduser().absolute()
        return cls(directory, ensure_neurosynth(directory))

    @cached_property
    def vocabulary(self) -> list[str]:
        """Terms, the columns of the feature matrix."""
        return [line.strip() for line in self.files[3].read_text().splitlines() if line.strip()]

    @cached_property
    def study_ids(self) -> np.ndarray:
        """Study ids (str) in metadata order, the rows of the feature matrix."""
        import pandas as pd

        return pd.read_table(self.files[1], usecols=["id"], dtype=str)["id"].to_numpy()

    @cached_property
    def features(self):
        """TF-IDF, scipy sparse (studies x terms), CSC."""
        from scipy import sparse

        matrix = sparse.load_npz(self.files[2]).tocsc()
        if matrix.shape != (len(self.study_ids), len(self.vocabulary)):
            raise DataError(
                f"{self.files[2]} is {matrix.shape[0]} x {matrix.shape[1]} but the metadata lists "
                f"{len(self.study_ids)} studies and the vocabulary {len(self.vocabulary)} terms; "
                f"delete {self.directory / 'neurosynth'} and fetch it again."
            )
        return matrix

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the four files (the cached maps are only valid for these bytes)."""
        digest = hashlib.sha256()
        for path in self.files:
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def check_terms(self, terms: list[str]) -> None:
        """Raise a :class:`DataError` (exit 65) naming every term missing from the vocabulary."""
        known = set(self.vocabulary)
        missing = sorted({t for t in terms if t not in known})
        if missing:
            raise DataError(
                f"Neurosynth term(s) {', '.join(map(repr, missing))} are not in the vocabulary of "
                f"{self.files[3]} ({len(known)} terms); fix the class-term table (--class-terms FILE)."
            )

    def studies_with_term(self, term: str, threshold: float = TFIDF_THRESHOLD) -> tuple[list[str], list[str]]:
        """Ids of the studies with TF-IDF >= ``threshold`` for ``term``, and of all the others."""
        self.check_terms([term])
        column = self.features[:, self.vocabulary.index(term)].toarray()[:, 0]
        chosen = column >= threshold
        return list(self.study_ids[chosen]), list(self.study_ids[~chosen])

    @property
    def dataset(self):
        """Coordinates and metadata as a NiMARE ``Dataset`` (``nimare.io.convert_neurosynth_to_dataset``)."""
        if self._dataset is None:
            from nimare.io import convert_neurosynth_to_dataset

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Dataset is deprecated in NiMARE 0.22
                warnings.simplefilter("ignore", DeprecationWarning)
                self._dataset = convert_neurosynth_to_dataset(str(self.files[0]), str(self.files[1]))
        return self._dataset


def meta_analysis(database: NeurosynthDatabase, term: str):
    """MKDAChi2 of the studies about ``term`` against the rest; the association z-map (NIfTI).

    Returns
    -------
    image : nibabel.Nifti1Image
        ``z_desc-association`` on NiMARE's MNI152 2 mm grid.
    counts : dict
        ``n_studies_term``, ``n_studies_rest``.

    Raises
    ------
    DataError
        Fewer than 2 studies on either side (MKDAChi2 cannot compare them).
    """
    from nimare.meta.cbma import MKDAChi2

    with_term, rest = database.studies_with_term(term)
    if len(with_term) < 2 or len(rest) < 2:
        raise DataError(
            f"Neurosynth term {term!r} selects {len(with_term)} of {len(database.study_ids)} studies "
            f"(TF-IDF >= {TFIDF_THRESHOLD}); too few for a meta-analysis: choose another term."
        )
    dataset = database.dataset
    # NiMARE's ids are "<study>-<contrast>" (Neurosynth studies have one contrast, "1").
    contrasts = dataset.metadata[["id", "study_id"]].astype(str)
    chosen = contrasts["study_id"].isin(set(with_term))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in NiMARE's posterior maps, unused here
        result = MKDAChi2().fit(
            dataset.slice(contrasts.loc[chosen, "id"].tolist()),
            dataset.slice(contrasts.loc[~chosen, "id"].tolist()),
        )
        image = result.get_map(REFERENCE_MAP)
    return image, {"n_studies_term": len(with_term), "n_studies_rest": len(rest)}


def cached_term_map(database: NeurosynthDatabase, term: str, cache_dir: Path):
    """The association z-map of ``term``, from ``cache_dir`` or computed and cached there.

    Parameters
    ----------
    database : NeurosynthDatabase
    term : str
    cache_dir : Path
        Usually ``NEUROSYNTH_DIR/maps``; ``term-<slug>_z.nii.gz`` + ``.json`` (term, study counts,
        database fingerprint, NiMARE version). A map made from other files is recomputed.

    Returns
    -------
    image : nibabel.Nifti1Image
    info : dict
        The sidecar content.
    """
    import nibabel as nib
    import nimare

    path = Path(cache_dir) / f"term-{term_slug(term)}_z.nii.gz"
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    if path.is_file() and sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        if info.get("term") == term and info.get("database_sha256") == database.fingerprint:
            LOGGER.info("Neurosynth map of %r from the cache %s", term, path)
            return nib.load(path), info
    LOGGER.info("Neurosynth meta-analysis of %r (MKDAChi2)", term)
    image, counts = meta_analysis(database, term)
    info = {
        "term": term,
        "map": REFERENCE_MAP,
        "estimator": "nimare.meta.cbma.MKDAChi2 (MKDAKernel r=10 mm)",
        "tfidf_threshold": TFIDF_THRESHOLD,
        **counts,
        "database": str(database.directory / "neurosynth"),
        "database_sha256": database.fingerprint,
        "nimare": nimare.__version__,
    }
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    write_json(sidecar, info)
    return nib.load(path), info


def map_cache(preferred: Path, fallback: Path) -> Path:
    """Where term maps will be cached, decided without creating anything.

    ``preferred`` (``NEUROSYNTH_DIR/maps``) when it can be created and written (a read-only baked
    copy cannot), else ``fallback`` (``RUN_DIR/neurosynth/maps``).

    Raises
    ------
    OutputError
        Neither can be written (exit 73).
    """
    for folder in (preferred, fallback):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            if folder != preferred:
                LOGGER.info("%s is not writable: caching Neurosynth maps in %s", preferred, fallback)
            return folder
    raise OutputError(
        f"neither {preferred} nor {fallback} can be written for the Neurosynth map cache; pass "
        "--neurosynth-dir with a writable copy, or choose a writable OUTPUT_DIR."
    )
