"""A run's series rebuilt with nilearn alone from its sidecar: the correctness reference.

Written independently of neurossm_app's code (the expansion columns the sidecar lists as
computed are computed here with pandas, as fMRIPrep defines them), so a test that compares the
two checks the sidecar's promise: these fields and the sources reproduce the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def resolved_sources(meta: dict, output_dir) -> tuple[Path, Path, Path | None, Path]:
    """BOLD, mask, confounds (None when none was read) and atlas files of a sidecar, its BIDS
    URIs resolved through OUTPUT_DIR's ``DatasetLinks``."""
    from neurossm_app.bids import dataset_links, resolve_bids_uri

    links = dataset_links(output_dir)
    bold, mask, *confounds = (resolve_bids_uri(uri, links) for uri in meta["Sources"])
    return bold, mask, (confounds or [None])[0], resolve_bids_uri(meta["AtlasFile"], links)


def sidecar_confounds(meta: dict, confounds_file) -> pd.DataFrame | None:
    """The sidecar's ``ConfoundRegressors`` from the fMRIPrep file, n/a filled as nilearn does.

    Columns listed in ``ConfoundsComputed`` are not in the file; they are computed from their base
    column (derivative1: backward difference, n/a first; power2: square).
    """
    if not meta["ConfoundRegressors"]:
        return None
    table = pd.read_csv(confounds_file, sep="\t", na_values="n/a")
    computed = {}
    for column in meta.get("ConfoundsComputed", []):
        for suffix in ("_derivative1_power2", "_derivative1", "_power2"):
            if column.endswith(suffix):
                base = table[column[: -len(suffix)]]
                break
        derivative = base.diff()
        values = {"_derivative1": derivative, "_power2": base**2, "_derivative1_power2": derivative**2}
        computed[column] = values[suffix]
    table = pd.concat([table, pd.DataFrame(computed, index=table.index)], axis=1)
    confounds = table[meta["ConfoundRegressors"]].copy()
    confounds.iloc[0] = confounds.iloc[0].fillna(confounds.iloc[1])  # nilearn's first-row fill
    return confounds


def masker_series(meta: dict, bold, mask, confounds_file, labels_img, n_volumes: int):
    """``NiftiLabelsMasker`` with the sidecar's settings on the run's files.

    Returns
    -------
    masker : NiftiLabelsMasker
        Fitted (``region_ids_`` maps its columns to label values).
    series : (T_kept, R') ndarray
        The masker's output for the volumes the sidecar does not list as censored.
    kept : list of int
        Those volumes' indices.
    """
    from nilearn.maskers import NiftiLabelsMasker

    censored = set(meta["CensoredVolumes"])
    assert set(meta.get("DummyVolumes", [])) <= censored
    kept = [t for t in range(n_volumes) if t not in censored]
    masker = NiftiLabelsMasker(
        labels_img=str(labels_img),
        mask_img=str(mask),
        strategy="mean",
        detrend=meta["Detrend"],
        standardize=meta["Standardize"],
        high_pass=meta["HighPass"],
        low_pass=meta["LowPass"],
        t_r=meta["RepetitionTime"],
        dtype=meta["Precision"],
    )
    series = masker.fit_transform(
        str(bold),
        confounds=sidecar_confounds(meta, confounds_file),
        sample_mask=np.asarray(kept) if censored else None,
    )
    return masker, series, kept


def compare_with_masker(ours: pd.DataFrame, meta: dict, masker, theirs: np.ndarray, kept: list[int]) -> int:
    """Assert our series equals the masker's on the kept volumes and is n/a on the others.

    ROIs are matched by label value (our column ``v - 1`` is label ``v``); ROIs the sidecar excludes
    are skipped. Returns the number of ROIs compared.
    """
    pairs = [(col, int(value)) for col, value in masker.region_ids_.items() if col != "background"]
    pairs = [(col, value) for col, value in pairs if ours.columns[value - 1] not in meta["ExcludedROIs"]]
    got = ours.iloc[kept, [value - 1 for _, value in pairs]].to_numpy()
    ref = theirs[:, [col for col, _ in pairs]]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    dropped = sorted(set(range(len(ours))) - set(kept))
    assert ours.iloc[dropped].isna().all().all()
    return len(pairs)
