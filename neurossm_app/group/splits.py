"""Cross-validation folds by subject, saved to ``splits.tsv`` so a resumed run reuses them.

One subject's scans are never split across folds (sklearn ``StratifiedGroupKFold``, stratified
on the label of each scan, grouped by subject). ``--skip-cross-validation`` holds out one
stratified fraction of the subjects instead (fold 0 is the test set). The assignment depends only
on the seed and on the (sorted) scans and labels; it is written once and read back by every later
call of the same run, which refuses to continue if the data have changed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from neurossm_app.errors import DataError, UsageError
from neurossm_app.files import write_tsv

TRAIN_ONLY = -1  # test_fold of scans that are never held out (hold-out split)


def check_fold_counts(
    labels: np.ndarray, subjects: list[str], classes: tuple[str, ...], n_folds: int, holdout: bool
) -> None:
    """Refuse settings that leave a fold without subjects or a class without training data.

    Raises
    ------
    UsageError
        Fewer subjects than folds, or a class with fewer subjects than folds (2 for a hold-out).
    """
    subjects_arr = np.asarray(subjects)
    n_subjects = len(set(subjects))
    needed = 2 if holdout else n_folds
    if n_subjects < needed:
        fix = (
            "add subjects" if holdout else f"lower --folds to {max(n_subjects, 2)} or fewer, or add subjects"
        )
        what = "a hold-out split" if holdout else f"--folds {n_folds}"
        raise UsageError(f"only {n_subjects} subject(s) selected but {what} needs at least {needed}; {fix}.")
    for index, name in enumerate(classes):
        n_class = len(set(subjects_arr[labels == index]))
        if n_class < needed:
            what = "the hold-out split" if holdout else f"--folds {n_folds}"
            fix = (
                "add subjects of that class (one to train on, one to test)"
                if holdout
                else "lower --folds or add subjects of that class"
            )
            raise UsageError(
                f"class {name!r} has {n_class} subject(s), too few for {what} (needs {needed}); {fix}."
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
) -> pd.DataFrame:
    """The ``splits.tsv`` table: one row per seed and scan.

    Parameters
    ----------
    repetition_times : list of float or None, optional
        Seconds per volume of every scan (``None``: not recorded, written ``n/a``).

    Returns
    -------
    pandas.DataFrame
        Columns ``seed``, ``scan``, ``subject``, ``label``, ``test_fold``, ``repetition_time``.
    """
    times = [np.nan if t is None else t for t in (repetition_times or [None] * len(scan_names))]
    frames = []
    for seed in seeds:
        folds = assign_test_folds(label_indices, subjects, seed, n_folds, holdout, test_size)
        frames.append(
            pd.DataFrame(
                {
                    "seed": seed,
                    "scan": scan_names,
                    "subject": subjects,
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
    key = ["seed", "scan", "subject", "label"]
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
