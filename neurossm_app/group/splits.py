"""Cross-validation folds by subject or by group, saved to ``splits.tsv`` so a resumed run reuses them.

One group's scans are never split across folds (sklearn ``StratifiedGroupKFold``, stratified on
the label of each scan, grouped by subject, or with ``--cv-group COLUMN`` by that
``participants.tsv`` column: site, family, person). ``--skip-cross-validation`` holds out one
stratified fraction of the groups instead (fold 0 is the test set). The assignment depends only
on the seed and on the (sorted) scans, groups and labels; it is written once and read back by
every later call of the same run, which refuses to continue if the data have changed.

The inner validation split of a training fold (:func:`inner_split`) is grouped and stratified
the same way, from the unit's seed; it is not saved, since it follows from ``splits.tsv`` and
the seed.

A group may hold scans of several labels (``--target task``, or a person whose windows are
separate subjects with their own labels): all its scans still go to one fold, and the
stratification balances the scans' labels across folds as far as whole groups allow.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError, InputMissingError, UsageError
from neurossm_app.files import write_tsv

TRAIN_ONLY = -1  # test_fold of scans that are never held out (hold-out split)


def check_fold_counts(
    labels: np.ndarray,
    subjects: list[str],
    classes: tuple[str, ...],
    n_folds: int,
    holdout: bool,
    unit: str = "subject",
) -> None:
    """Refuse settings that leave a fold without subjects or a class without training data.

    Parameters
    ----------
    subjects : list of str, length N
        The fold group of every scan: its subject, or its ``--cv-group`` value (then ``unit``
        names the groups in the messages, :func:`group_unit`).

    Raises
    ------
    UsageError
        Fewer groups than folds, or a class with fewer groups than folds (2 for a hold-out).
    """
    subjects_arr = np.asarray(subjects)
    n_subjects = len(set(subjects))
    needed = 2 if holdout else n_folds
    if n_subjects < needed:
        fix = f"add {unit}s" if holdout else f"lower --folds to {max(n_subjects, 2)} or fewer, or add {unit}s"
        what = "a hold-out split" if holdout else f"--folds {n_folds}"
        raise UsageError(f"only {n_subjects} {unit}(s) selected but {what} needs at least {needed}; {fix}.")
    for index, name in enumerate(classes):
        n_class = len(set(subjects_arr[labels == index]))
        if n_class < needed:
            what = "the hold-out split" if holdout else f"--folds {n_folds}"
            fix = (
                f"add {unit}s of that class (one to train on, one to test)"
                if holdout
                else f"lower --folds or add {unit}s of that class"
            )
            raise UsageError(
                f"class {name!r} has {n_class} {unit}(s), too few for {what} (needs {needed}); {fix}."
            )


def assign_test_folds(
    labels: np.ndarray,
    subjects: list[str],
    seed: int,
    n_folds: int,
    holdout: bool = False,
    test_size: float = 0.2,
) -> np.ndarray:
    """The fold in which each scan is held out.

    Parameters
    ----------
    labels : numpy.ndarray, (N,) int
        Class of each scan.
    subjects : list of str, length N
        Subject of each scan (the groups).
    seed
        Shuffling seed.
    n_folds
        Folds of the cross-validation (ignored for a hold-out split).
    holdout, test_size
        One stratified split by subject with ``test_size`` of the subjects held out.

    Returns
    -------
    numpy.ndarray, (N,) int64
        Test fold of every scan; :data:`TRAIN_ONLY` for scans never held out.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    groups = np.asarray(subjects)
    if holdout:
        unique = sorted(set(subjects))
        # Stratify on each subject's set of labels (one label for participants.tsv targets).
        keys = ["+".join(map(str, sorted(set(labels[groups == s])))) for s in unique]
        n_test = min(max(1, round(test_size * len(unique))), len(unique) - 1)
        counts = pd.Series(keys).value_counts()
        stratify = keys if counts.min() >= 2 and n_test >= len(counts) else None
        _, test_subjects = train_test_split(unique, test_size=n_test, random_state=seed, stratify=stratify)
        return np.where(np.isin(groups, test_subjects), 0, TRAIN_ONLY).astype(np.int64)
    folds = np.full(len(labels), TRAIN_ONLY, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has fewer members than n_splits" is checked by us beforehand.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[test] = fold
    return folds


def build_splits(
    scan_names: list[str],
    subjects: list[str],
    labels: list[str],
    label_indices: np.ndarray,
    seeds: tuple[int, ...],
    n_folds: int,
    holdout: bool,
    test_size: float,
    repetition_times: list[float | None] | None = None,
    groups: list[str] | None = None,
) -> pd.DataFrame:
    """The ``splits.tsv`` table: one row per seed and scan.

    Parameters
    ----------
    repetition_times : list of float or None, optional
        Seconds per volume of every scan (``None``: not recorded, written ``n/a``).
    groups : list of str, optional
        The fold group of every scan (:func:`fold_groups`); default: its subject.

    Returns
    -------
    pandas.DataFrame
        Columns ``seed``, ``scan``, ``subject``, ``group``, ``label``, ``test_fold``,
        ``repetition_time``.
    """
    times = [np.nan if t is None else t for t in (repetition_times or [None] * len(scan_names))]
    groups = list(subjects) if groups is None else list(groups)
    frames = []
    for seed in seeds:
        folds = assign_test_folds(label_indices, groups, seed, n_folds, holdout, test_size)
        frames.append(
            pd.DataFrame(
                {
                    "seed": seed,
                    "scan": scan_names,
                    "subject": subjects,
                    "group": groups,
                    "label": labels,
                    "test_fold": folds,
                    "repetition_time": times,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def load_or_save_splits(path: Path, splits: pd.DataFrame, run_name: str) -> pd.DataFrame:
    """Save ``splits`` to ``path``, or check that the saved splits describe the same data.

    Returns the saved splits when they exist (:func:`saved_splits`).
    """
    saved = saved_splits(path, splits, run_name)
    if saved is not None:
        return saved
    write_tsv(path, splits)
    return splits


def saved_splits(path: Path, splits: pd.DataFrame, run_name: str) -> pd.DataFrame | None:
    """The splits saved at ``path``, checked against ``splits``; ``None`` when none are saved.

    Read only. The saved splits win over a recomputation, so a newer scikit-learn cannot
    reshuffle a half-finished run.

    Raises
    ------
    DataError
        The saved splits are unreadable or list other scans, subjects or labels.
    """
    if not path.is_file():
        return None
    try:
        # Strings as written: subject "01" must not come back as the number 1.
        saved = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        saved = saved.astype({"seed": int, "test_fold": int})
    except (KeyError, ValueError, pd.errors.ParserError) as err:
        raise DataError(
            f"{path} is unreadable ({type(err).__name__}); delete it with the rest of the run, "
            "or choose a new --run-name."
        ) from None
    # splits.tsv of runs started before --cv-group have no group column (their groups were subjects)
    key = ["seed", "scan", "subject", "label"] + (["group"] if "group" in saved.columns else [])
    now = splits[key].astype(str).sort_values(key).reset_index(drop=True)
    before = saved[key].astype(str).sort_values(key).reset_index(drop=True)
    if not now.equals(before):
        scans_now, scans_before = set(splits["scan"]), set(saved["scan"])
        added, removed = sorted(scans_now - scans_before), sorted(scans_before - scans_now)
        detail = (
            f"{len(added)} scan(s) added, {len(removed)} removed"
            if added or removed
            else "labels or seeds changed"
        )
        raise DataError(
            f"the data differ from those run {run_name!r} was started with ({detail}; see {path}); "
            "choose a new --run-name, or restore the original selection."
        )
    return saved.sort_values(["seed", "scan"]).reset_index(drop=True)


def unit_split(
    splits: pd.DataFrame, scan_names: list[str], fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``scan_names``) of the training and test scans of one unit.

    Returns
    -------
    train, test : numpy.ndarray of int64
    """
    of_seed = splits[splits["seed"] == seed].set_index("scan")["test_fold"]
    folds = of_seed.reindex(scan_names).to_numpy()
    return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def split_groups(splits: pd.DataFrame, scan_names: list[str], seed: int) -> list[str]:
    """The fold group of every scan of ``scan_names`` as ``splits.tsv`` records it (else its subject)."""
    column = "group" if "group" in splits.columns else "subject"
    of_seed = splits[splits["seed"] == seed].set_index("scan")[column]
    return [str(g) for g in of_seed.reindex(scan_names)]


def read_cv_groups(participants_tsv: Path, column: str) -> dict[str, str]:
    """One ``participants.tsv`` column as subject (no ``sub-``) -> fold group.

    Raises
    ------
    InputMissingError
        No ``participants.tsv``.
    DataError
        Unreadable, without ``participant_id`` or ``column``.
    """
    if not participants_tsv.is_file():
        raise InputMissingError(
            f"{participants_tsv} does not exist; --cv-group {column} reads it (pass --participants-tsv FILE)."
        )
    try:
        table = pd.read_csv(participants_tsv, sep="\t", dtype=str, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{participants_tsv} is not a readable TSV ({err}); fix the file.") from None
    if "participant_id" not in table.columns or column not in table.columns:
        shown = ", ".join(c for c in table.columns if c != "participant_id") or "none"
        raise DataError(
            f"--cv-group {column}: {participants_tsv} needs participant_id and {column} columns "
            f"(columns: {shown}); pass --cv-group <one of them>."
        )
    ids = table["participant_id"].str.strip().str.removeprefix("sub-")
    return dict(zip(ids, table[column].str.strip(), strict=True))


def fold_groups(subjects: list[str], cv_group: str | None, participants_tsv: Path) -> list[str]:
    """The fold group of every scan: its subject, or its subject's ``cv_group`` value.

    Called by :mod:`.run` once the dataset is loaded; what it returns goes to
    :func:`check_fold_counts` and :func:`build_splits`.

    Raises
    ------
    DataError
        A selected subject has no value (absent, empty or ``n/a``) in the ``cv_group`` column:
        leaving it in a group of its own could put its relatives or site mates on both sides.
    """
    if cv_group is None:
        return list(subjects)
    values = read_cv_groups(participants_tsv, cv_group)
    missing = sorted({s for s in subjects if values.get(s, "") in ("", "n/a")})
    if missing:
        shown = ", ".join(f"sub-{s}" for s in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"--cv-group {cv_group}: {len(missing)} selected subject(s) have no value in "
            f"{participants_tsv} ({shown}); fill in the column, or leave those subjects out "
            "(--participant-label)."
        )
    # Prefixed, so a group value never reads as a subject label in splits.tsv.
    return [f"{cv_group}-{values[s]}" for s in subjects]


def group_unit(cv_group: str | None) -> str:
    """What a fold group is called in messages: ``subject``, or ``--cv-group site group``."""
    return "subject" if cv_group is None else f"--cv-group {cv_group} group"


def inner_split(
    labels: np.ndarray, groups: list[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The inner validation split of a training fold, grouped and stratified as the outer folds.

    ``StratifiedGroupKFold`` with ``round(1 / fraction)`` splits (at most one per group, and no
    more than the largest class has scans) and shuffling from ``seed``; its first fold is the
    validation split.

    Parameters
    ----------
    labels : numpy.ndarray, (N_train,) int
        Classes of the training fold's scans.
    groups : list of str, length N_train
        Their fold groups.
    fraction : float
        Share of the groups to hold out, in (0, 0.5).
    seed : int

    Returns
    -------
    (inner_train, validation) : pair of numpy.ndarray of int64, or None
        Positions within the training fold; ``None`` when no split keeps every class of the fold
        on both sides (too few groups per class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    largest_class = int(np.bincount(labels).max()) if len(labels) else 0
    # scikit-learn refuses more splits than groups, or than the scans of every class
    n_splits = min(max(2, round(1 / fraction)), len(set(groups)), largest_class)
    if n_splits < 2:
        return None
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on small folds
        inner_train, validation = next(splitter.split(np.zeros(len(labels)), labels, np.asarray(groups)))
    classes = set(labels.tolist())
    if set(labels[inner_train].tolist()) != classes or set(labels[validation].tolist()) != classes:
        return None
    return inner_train.astype(np.int64), validation.astype(np.int64)
