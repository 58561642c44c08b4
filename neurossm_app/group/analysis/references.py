"""Neurosynth reference vectors: each class's term, its meta-analytic map, parcellated."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.group.analysis.class_means import ClassMean
from neurossm_app.group.analysis.options import AnalysisOptions
from neurossm_app.group.maps import AtlasGrid
from neurossm_app.group.neurosynth import NeurosynthDatabase, resolve_class_terms
from neurossm_app.group.presets import GroupSettings

LOGGER = logging.getLogger("neurossm_app")


@dataclass(frozen=True)
class ClassTerms:
    """The Neurosynth term of every class and where the terms come from.

    Attributes
    ----------
    terms : dict
        Class label -> term, or ``None`` (no reference for that class).
    source : str
        The preset table or the ``--class-terms`` file.
    database : NeurosynthDatabase or None
        Opened, with every term checked against its vocabulary; ``None`` when no class has a term.
    """

    terms: dict[str, str | None]
    source: str
    database: NeurosynthDatabase | None


def open_class_terms(
    settings: GroupSettings, classes: tuple[str, ...], options: AnalysisOptions
) -> ClassTerms:
    """Resolve the class terms and open the database when any class has one (never downloads).

    Raises
    ------
    InputMissingError
        Neurosynth data missing (66).
    DataError
        A term not in the Neurosynth vocabulary (65).
    """
    terms, source = resolve_class_terms(settings.preset, settings.target, classes, options.class_terms)
    wanted = sorted({t for t in terms.values() if t})
    if not wanted:
        LOGGER.info(
            "no Neurosynth term for the classes %s of this run (%s): reference analysis skipped, "
            "CPA maps are still written",
            ", ".join(classes),
            source,
        )
        return ClassTerms(terms, source, None)
    database = NeurosynthDatabase.open(options.neurosynth_dir)
    database.check_terms(wanted)
    return ClassTerms(terms, source, database)


def term_map_cache(class_terms: ClassTerms, run_dir: Path) -> Path | None:
    """Where term maps are cached (:func:`~neurossm_app.group.neurosynth.map_cache`), checked
    without creating anything; ``None`` when no class has a term.

    Beside the database, or in ``RUN_DIR/neurosynth/maps`` when that is read-only.
    """
    from neurossm_app.group.neurosynth import map_cache

    if class_terms.database is None:
        return None
    return map_cache(class_terms.database.directory / "maps", run_dir / "neurosynth" / "maps")


def reference_vectors(
    class_terms: ClassTerms,
    classes: tuple[str, ...],
    means: dict[int, ClassMean],
    grid: AtlasGrid,
    cache: Path | None,
) -> tuple[dict[int, np.ndarray], dict[int, dict[str, Any]]]:
    """The parcellated reference map of every class that has a term and a class mean.

    ``cache`` is :func:`term_map_cache`'s folder (created here when a map is first written).

    Returns
    -------
    vectors : dict
        Class index -> (R,) reference values (0 for an ROI with no voxel in the atlas image).
    info : dict
        Class index -> the term map's sidecar (term, study counts, database fingerprint).
    """
    from neurossm_app.group.neurosynth import cached_term_map

    database = class_terms.database
    if database is None or cache is None:
        return {}, {}
    cache.mkdir(parents=True, exist_ok=True)
    vectors, info = {}, {}
    for label, name in enumerate(classes):
        term = class_terms.terms.get(name)
        if not term or label not in means:
            continue
        image, info[label] = cached_term_map(database, term, cache)
        vector = grid.parcellate(image)
        empty = int(np.isnan(vector).sum())
        if empty:
            LOGGER.warning("%d ROI(s) have no voxel in the atlas image: reference value 0", empty)
        vectors[label] = np.nan_to_num(vector, nan=0.0)
    return vectors, info
