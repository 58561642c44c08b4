"""Write a whole synthetic dataset: raw BIDS, fMRIPrep derivatives, atlases and ground truth."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from neurossm_app.synthetic.atlas import install_atlases
from neurossm_app.synthetic.bids_writer import (
    GENERATOR_NAME,
    RunKey,
    write_anat,
    write_derivative_run,
    write_derivatives_top_level,
    write_raw_bold,
    write_raw_top_level,
)
from neurossm_app.synthetic.effects import Effect, planted_effects, truth_record
from neurossm_app.synthetic.files import write_json
from neurossm_app.synthetic.hcp_layout import hcp_run_name, write_hcp_run, write_wmparc
from neurossm_app.synthetic.neurosynth import write_neurosynth_database
from neurossm_app.synthetic.signals import confounds_table
from neurossm_app.synthetic.simulate import Anatomy, build_anatomy, motion_weights, simulate_run
from neurossm_app.synthetic.surface import vertex_sources, write_dtseries

EXIT_CANNOT_CREATE = 73
#: Raw BOLD is kept small: roughly this voxel size (mm) after striding the output grid.
RAW_BOLD_VOXEL_MM = 8.0


class SyntheticDatasetError(Exception):
    """A user-facing problem; ``exit_code`` follows the BIDS-Apps convention (73: cannot create output)."""

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT_CREATE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _is_our_dataset(out_dir: Path) -> bool:
    description = out_dir / "dataset_description.json"
    try:
        generated = json.loads(description.read_text()).get("GeneratedBy", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(item, dict) and item.get("Name") == GENERATOR_NAME for item in generated)


def _prepare_output(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SyntheticDatasetError(
            f"output path {out_dir} exists and is not a directory; choose another path"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not _is_our_dataset(out_dir):
            raise SyntheticDatasetError(
                f"output directory {out_dir} is not empty and was not written by {GENERATOR_NAME}; "
                "choose an empty or new directory (nothing was changed)"
            )
        if not force:
            raise SyntheticDatasetError(
                f"output directory {out_dir} already holds a {GENERATOR_NAME} dataset; "
                "pass --force to replace it"
            )
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SyntheticDatasetError(f"cannot create output directory {out_dir}: {error.strerror}") from error


def assign_participants(n_subjects: int, rng: np.random.Generator) -> pd.DataFrame:
    """Balanced sex and group, group independent of sex (balanced within each sex).

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id`` (``sub-01`` ...), ``sex`` (M/F), ``group`` (PD/Control), ``age``.
    """
    width = max(2, len(str(n_subjects)))
    sexes = np.array(["F", "M"] * (n_subjects // 2 + 1))[:n_subjects]
    sexes = rng.permutation(sexes)
    groups = np.empty(n_subjects, dtype=object)
    for offset, sex in enumerate(("F", "M")):
        members = np.flatnonzero(sexes == sex)
        labels = np.array((["PD", "Control"] if offset == 0 else ["Control", "PD"]) * (len(members) // 2 + 1))
        groups[members] = rng.permutation(labels[: len(members)])
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{k + 1:0{width}d}" for k in range(n_subjects)],
            "sex": sexes,
            "group": groups.astype(str),
            "age": rng.integers(45, 76, n_subjects),
        }
    )


def _t1w_image(anatomy: Anatomy) -> np.ndarray:
    intensities = {"cortex": 80, "deep_grey": 85, "white_matter": 110, "csf": 30}
    flat = np.zeros(len(anatomy.rho), dtype=np.int16)
    for name, value in intensities.items():
        flat[anatomy.tissue[name]] = value
    volume = np.zeros(anatomy.grid.shape, dtype=np.int16)
    volume[anatomy.brain] = flat
    return volume


def _run_keys(subject: str, sessions: list[str | None], tasks: list[str], runs: int) -> list[RunKey]:
    numbers: list[int | None] = list(range(1, runs + 1)) if runs > 1 else [None]
    return [RunKey(subject, task, session, run) for session in sessions for task in tasks for run in numbers]


def _run_effects(
    effects: list[Effect], row: pd.Series, task: str, scales: dict[tuple[str, str], float]
) -> list[tuple[Effect, float]]:
    labels = {"sex": row["sex"], "group": row["group"], "task": task}
    return [
        (effect, scales[effect.target, effect.label])
        for effect in effects
        if labels[effect.target] == effect.label
    ]


def make_dataset(
    out_dir: str | Path,
    *,
    subjects: int = 8,
    tasks: list[str] | tuple[str, ...] = ("rest",),
    runs: int = 1,
    volumes: int = 200,
    tr: float = 0.72,
    voxel_size: float = 4.0,
    seed: int = 0,
    atlas_cache: str | Path | None = None,
    sessions: list[str] | tuple[str, ...] | None = None,
    force: bool = False,
    layout: str = "fmriprep",
    cifti: bool = False,
    nprocs: int = 1,
) -> Path:
    """Write a synthetic raw BIDS dataset with fMRIPrep derivatives, atlases and ground truth.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Dataset root; must be new, empty, or (with ``force``) a previous neurossm-synth output.
    subjects, runs, volumes : int
        Participants, runs per task and session, and volumes (``T``) per run.
    tasks : sequence of str
        BIDS task labels; with two or more, each non-``rest`` task carries its own effect.
    tr : float
        Repetition time in seconds.
    voxel_size : float
        Output grid voxel size in mm (2 gives fMRIPrep's ``res-2`` grid, shape (97, 115, 97)).
    seed : int
        Seeds participants, noise, motion and effect timing (the atlas geometry is fixed).
    atlas_cache : str or pathlib.Path, optional
        Where the atlases go; default ``out_dir/sourcedata/atlases``.
    sessions : sequence of str, optional
        Session labels; ``None`` for no session level.
    force : bool
        Replace ``out_dir`` if it is a previous neurossm-synth dataset.
    layout : {"fmriprep", "hcp"}
        fMRIPrep derivatives (with raw BIDS), or HCP-YA's minimal-preprocessing layout at
        ``out_dir`` (``<subject>/MNINonLinear/Results/<run>``, :mod:`.hcp_layout`).
    cifti : bool
        Also write each run's fsLR grayordinates (a dtseries on :mod:`.surface`'s small mesh).
    nprocs : int
        Processes that simulate and write participants at once (forked); the files are the same
        for any number.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    SyntheticDatasetError
        When ``out_dir`` cannot be used (exit code 73) or an option is invalid (64).
    """
    from threadpoolctl import threadpool_limits

    # the matrices are small (T x T Gram matrices): BLAS threads only add contention
    with threadpool_limits(limits=1):
        return _make_dataset(
            out_dir, subjects, list(tasks), runs, volumes, tr, voxel_size, seed, atlas_cache, sessions, force,
            layout, cifti, nprocs,
        )  # fmt: skip


def _make_dataset(
    out_dir: str | Path,
    subjects: int,
    tasks: list[str],
    runs: int,
    volumes: int,
    tr: float,
    voxel_size: float,
    seed: int,
    atlas_cache: str | Path | None,
    sessions: list[str] | tuple[str, ...] | None,
    force: bool,
    layout: str = "fmriprep",
    cifti: bool = False,
    nprocs: int = 1,
) -> Path:
    out_dir = Path(out_dir).absolute()
    _check_options(subjects, tasks, runs, volumes, tr, voxel_size, sessions)
    if layout == "hcp" and sessions:
        raise SyntheticDatasetError(
            "--layout hcp has no sessions (HCP-YA has none); leave --sessions out", 64
        )
    cache_dir = (
        Path(atlas_cache).absolute() if atlas_cache is not None else out_dir / "sourcedata" / "atlases"
    )
    _check_atlas_cache(cache_dir)
    _prepare_output(out_dir, force)
    install_atlases(cache_dir)

    rng = np.random.default_rng(seed)
    participants = assign_participants(subjects, rng)
    effects = planted_effects(tasks)
    anatomy = build_anatomy(float(voxel_size))
    write_raw_top_level(out_dir, participants, tasks, tr, seed)
    writer = _RunWriter(out_dir, anatomy, voxel_size, tr, layout, cifti)
    session_labels: list[str | None] = list(sessions) if sessions else [None]

    write_participants = partial(
        _write_participants,
        writer=writer, effects=effects, sessions=session_labels, tasks=tasks, runs=runs, volumes=volumes,
        seed=seed,
    )  # fmt: skip
    rows = [row for _, row in participants.iterrows()]
    workers = max(1, min(nprocs, len(rows)))
    if workers == 1:
        write_participants(rows)
    else:  # each subject has its own random stream: the files do not depend on the workers
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(write_participants, [rows[k::workers] for k in range(workers)]))

    parameters = {
        "subjects": subjects,
        "tasks": tasks,
        "runs": runs,
        "volumes": volumes,
        "tr": tr,
        "voxel_size": voxel_size,
        "seed": seed,
        "sessions": list(sessions) if sessions else None,
        "layout": layout,
        "cifti": cifti,
    }
    truth = truth_record(effects, parameters)
    write_json(out_dir / "sourcedata" / "synthetic_truth.json", truth)
    # A Neurosynth-format database for `group --analysis --neurosynth-dir OUT_DIR/sourcedata/neurosynth`.
    write_neurosynth_database(out_dir / "sourcedata" / "neurosynth", truth, seed=seed)
    return out_dir


def _write_participants(
    rows: list[pd.Series],
    *,
    writer: _RunWriter,
    effects: list[Effect],
    sessions: list[str | None],
    tasks: list[str],
    runs: int,
    volumes: int,
    seed: int,
) -> None:
    """Simulate and write every run of these participants (rows of ``participants.tsv``)."""
    anatomy = writer.anatomy
    for row in rows:
        subject = row["participant_id"].removeprefix("sub-")
        subject_rng = np.random.default_rng([seed, int(subject)])
        weights = motion_weights(anatomy, subject_rng)
        scales = {(effect.target, effect.label): float(subject_rng.uniform(0.8, 1.2)) for effect in effects}
        writer.subject(subject, sessions)
        for key in _run_keys(subject, sessions, tasks, runs):
            run_effects = _run_effects(effects, row, key.task, scales)
            bold, motion = simulate_run(anatomy, weights, run_effects, subject_rng, volumes, writer.tr)
            writer.run(key, bold, motion)
            del bold


class _RunWriter:
    """Writes the simulated runs in one layout: fMRIPrep derivatives (with a raw BIDS copy of
    each run, heavily downsampled) or HCP-YA's folders."""

    def __init__(
        self, out_dir: Path, anatomy: Anatomy, voxel_size: float, tr: float, layout: str, cifti: bool
    ):
        self.out_dir, self.anatomy, self.voxel_size, self.tr = out_dir, anatomy, voxel_size, tr
        self.layout, self.cifti = layout, cifti
        self.fmriprep_dir = out_dir / "derivatives" / "fmriprep"
        if layout == "fmriprep":
            write_derivatives_top_level(self.fmriprep_dir)
        grid = anatomy.grid
        self.stride = max(1, int(round(RAW_BOLD_VOXEL_MM / voxel_size)))
        self.raw_affine = grid.affine.copy()
        self.raw_affine[:3, :3] *= self.stride
        self.raw_shape = tuple(len(range(0, n, self.stride)) for n in grid.shape)
        brain_ijk = np.argwhere(anatomy.brain)  # (V, 3), the row order of the simulated BOLD
        self.on_raw_lattice = np.all(brain_ijk % self.stride == 0, axis=1)
        self.raw_ijk = tuple((brain_ijk[self.on_raw_lattice] // self.stride).T)
        self.tissue = {"csf": anatomy.tissue["csf"], "white_matter": anatomy.tissue["white_matter"]}
        self.sources = vertex_sources(anatomy) if cifti else None  # the voxel each vertex samples

    def subject(self, subject: str, sessions: list[str | None]) -> None:
        if self.layout == "hcp":
            write_wmparc(self.out_dir, subject, self.anatomy)
            return
        for session in sessions:
            write_anat(self.out_dir, subject, session, _t1w_image(self.anatomy), self.anatomy.grid.affine)

    def run(self, key: RunKey, bold: np.ndarray, motion: np.ndarray) -> None:
        grid, tr = self.anatomy.grid, self.tr
        if self.layout == "hcp":
            name = hcp_run_name(key.task, key.run)
            write_hcp_run(self.out_dir, key.subject, name, bold, motion, self.anatomy, tr, self.sources)
            return
        confounds, metadata = confounds_table(bold, self.tissue, motion, tr)
        write_derivative_run(
            self.fmriprep_dir,
            key,
            self.voxel_size,
            bold,
            self.anatomy.brain,
            grid.affine,
            tr,
            confounds,
            metadata,
        )
        if self.sources is not None:
            stem = key.func_dir(self.fmriprep_dir) / f"{key.stem()}_space-fsLR_den-91k_bold"
            write_dtseries(stem.with_name(stem.name + ".dtseries.nii"), bold, self.anatomy, tr, self.sources)
            write_json(
                stem.with_name(stem.name + ".dtseries.json"), {"RepetitionTime": tr, "TaskName": key.task}
            )
        raw = np.zeros((*self.raw_shape, bold.shape[1]), dtype=np.int16)
        raw[self.raw_ijk] = np.round(bold[self.on_raw_lattice]).astype(np.int16)
        write_raw_bold(self.out_dir, key, raw, self.raw_affine, tr)


#: TemplateFlow parses entities from the whole absolute path, so a folder named e.g.
#: ``atlas-cache`` above TEMPLATEFLOW_HOME makes every atlas query come back empty.
_TEMPLATEFLOW_ENTITY_FOLDER = re.compile(
    r"^(tpl|cohort|res|den|atlas|seg|scale|roi|label|desc|space|hemi|from|to|mode)-", re.IGNORECASE
)


def _check_atlas_cache(cache_dir: Path) -> None:
    clashes = [part for part in (cache_dir / "templateflow").parts if _TEMPLATEFLOW_ENTITY_FOLDER.match(part)]
    if clashes:
        raise SyntheticDatasetError(
            f"atlas cache {cache_dir} has folder(s) {', '.join(clashes)} that TemplateFlow would read as "
            "BIDS entities (its queries would find nothing); "
            "choose a path without 'atlas-', 'res-', ... folders",
            exit_code=64,
        )


def _check_options(
    subjects: int,
    tasks: list[str],
    runs: int,
    volumes: int,
    tr: float,
    voxel_size: float,
    sessions: list[str] | tuple[str, ...] | None,
) -> None:
    problems = []
    if subjects < 2:
        problems.append(f"--subjects must be at least 2 (got {subjects})")
    if runs < 1:
        problems.append(f"--runs must be at least 1 (got {runs})")
    if volumes < 20:
        problems.append(f"--volumes must be at least 20 (got {volumes})")
    if tr <= 0:
        problems.append(f"--tr must be positive seconds (got {tr})")
    if not 1.0 <= voxel_size <= 12.0:
        problems.append(f"--voxel-size must be between 1 and 12 mm (got {voxel_size})")
    labels = list(tasks) + list(sessions or [])
    bad = [label for label in labels if not label or not label.isalnum()]
    if not tasks:
        problems.append("--tasks needs at least one task label")
    if bad:
        problems.append(f"task and session labels must be alphanumeric (got {', '.join(map(repr, bad))})")
    if len(set(tasks)) != len(tasks):
        problems.append("--tasks lists a task twice")
    if problems:
        raise SyntheticDatasetError("; ".join(problems), exit_code=64)
