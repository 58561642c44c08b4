"""``neurossm-app-import``: the original NeuroSSM data files -> participant-level outputs.

Every input is synthetic and written here, in each structure the original code's files may have:
numeric 3D arrays (both layouts), object arrays of BolT-style records, lists of records in a
pickle, dicts keyed by subject, dicts of columns and pickled tables. Dimensions are unequal
(ROIs != volumes != subjects) so axis mix-ups fail.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurossm_app.atlases import roi_names
from neurossm_app.bids import build_path
from neurossm_app.files import read_tsv
from neurossm_app.legacy import main
from neurossm_app.legacy.labels import HCP_TASKS

N_SCHAEFER, N_AAL = 400, 166
SPACE = "MNI152NLin2009cAsym"


def _series(rng: np.random.Generator, n_rois: int, n_volumes: int) -> np.ndarray:
    """ROIs x volumes, float32."""
    return rng.standard_normal((n_rois, n_volumes)).astype(np.float32)


def _tsv(out: Path, subject: str, task: str = "rest", atlas: str = "Schaefer400n17", run=None) -> Path:
    entities = {"subject": subject, "task": task, "run": run, "space": SPACE, "atlas": atlas, "stat": "mean"}
    return build_path(out, entities, "timeseries", ".tsv")


def _pheno(path: Path, subjects: list, sexes: list, releases: list | None = None) -> Path:
    releases = releases or ["Q1"] * len(subjects)
    table = pd.DataFrame({"Subject": subjects, "Release": releases, "Gender": sexes, "Age": "22-25"})
    table.to_csv(path, index=False)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["roi-time", "time-roi"])
def test_numeric_3d_array_both_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    data = np.stack([_series(rng, N_SCHAEFER, 37) for _ in range(5)])  # (5, 400, 37)
    stored = data if layout == "roi-time" else data.transpose(0, 2, 1)
    np.save(tmp_path / "dataset_hcpRest_schaefer.npy", stored)
    subjects = [100307, 100408, 101107, 101309, 101915]
    pd.DataFrame({"subject": subjects}).to_csv(tmp_path / "samples.csv", index=False)
    pheno = _pheno(tmp_path / "pheno.csv", subjects[::-1], ["M", "F", "M", "F", "F"][::-1])
    out = tmp_path / "out"
    argv = ["hcp-rest", str(tmp_path / "dataset_hcpRest_schaefer.npy"), str(out)]
    assert main([*argv, "--pheno", str(pheno), "--sample-table", str(tmp_path / "samples.csv")]) == 0

    table = read_tsv(_tsv(out, "101107"))
    assert list(table.columns) == list(roi_names("schaefer400"))
    assert table.shape == (37, 400)  # rows = volumes
    np.testing.assert_array_equal(table.to_numpy(np.float32), data[2].T)
    sidecar = json.loads(_tsv(out, "101107").with_suffix(".json").read_text())
    assert sidecar["RepetitionTime"] == 0.72 and sidecar["Atlas"] == "Schaefer400n17"
    assert sidecar["ImportedFrom"]["StoredLayout"].startswith("ROIs" if layout == "roi-time" else "volumes")
    assert sidecar["Sources"][0].endswith("dataset_hcpRest_schaefer.npy")
    participants = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str)
    assert participants.set_index("participant_id")["sex"].to_dict() == {
        "sub-100307": "M",
        "sub-100408": "F",
        "sub-101107": "M",
        "sub-101309": "F",
        "sub-101915": "F",
    }
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_object_array_of_bolt_style_records(tmp_path):
    """Records as the original loaders read them: roiTimeseries (T x N), pheno {subjectId, gender}."""
    rng = np.random.default_rng(1)
    records = [
        {
            "roiTimeseries": _series(rng, N_SCHAEFER, 41 + i).T,
            "pheno": {"subjectId": 200 + i, "gender": i % 2},
        }
        for i in range(4)
    ]
    array = np.empty(len(records), dtype=object)
    array[:] = records
    np.save(tmp_path / "rest.npy", array, allow_pickle=True)
    out = tmp_path / "out"
    assert main(["hcp-rest", str(tmp_path / "rest.npy"), str(out), "--allow-pickle"]) == 0
    table = read_tsv(_tsv(out, "203"))
    np.testing.assert_array_equal(table.to_numpy(np.float32), records[3]["roiTimeseries"])
    sexes = pd.read_csv(out / "participants.tsv", sep="\t").set_index("participant_id")["sex"]
    assert sexes.to_dict() == {"sub-200": "F", "sub-201": "M", "sub-202": "F", "sub-203": "M"}  # 0 F, 1 M


def test_pickled_list_of_ppmi_records(tmp_path, capsys):
    rng = np.random.default_rng(2)
    groups = ["PD", "Control", 1, 0, "Parkinson's disease", "healthy control"]
    records = [
        {"subject_id": f"PPMI_{3000 + i}", "timeseries": _series(rng, N_AAL, 53), "group": g}
        for i, g in enumerate(groups)
    ]
    path = tmp_path / "dataset_ppmi_atlas-AAL-3V2.pickle"
    path.write_bytes(pickle.dumps(records))
    out = tmp_path / "out"
    assert main(["ppmi", str(path), str(out), "--allow-pickle", "--tr", "2.5"]) == 0
    assert "group (subjects): Control 3, PD 3" in capsys.readouterr().out
    participants = pd.read_csv(out / "participants.tsv", sep="\t").set_index("participant_id")
    assert participants["group"].tolist() == ["PD", "Control", "PD", "Control", "PD", "Control"]
    assert participants.loc["sub-PPMI3002", "source_id"] == "PPMI_3002"
    path_3 = _tsv(out, "PPMI3003", atlas="AAL3v2")
    assert list(read_tsv(path_3).columns) == list(roi_names("aal3v2"))
    sidecar = json.loads(path_3.with_suffix(".json").read_text())
    assert sidecar["RepetitionTime"] == 2.5 and sidecar["RepetitionTimeSource"] == "--tr"


def test_dict_keyed_by_subject_with_task_names_codes_and_runs(tmp_path):
    rng = np.random.default_rng(3)
    data = {
        "100307": {
            "tfMRI_EMOTION_LR": _series(rng, N_SCHAEFER, 30),
            "tfMRI_WM_RL": _series(rng, N_SCHAEFER, 31),
        },
        "100408": [
            {"data": _series(rng, N_SCHAEFER, 32).T, "task": 3},  # code 3: motor
            {"data": _series(rng, N_SCHAEFER, 33), "task": "MOTOR"},
            {"data": _series(rng, N_SCHAEFER, 34), "label": "Working Memory"},
        ],
    }
    path = tmp_path / "task.pickle"
    path.write_bytes(pickle.dumps(data))
    out = tmp_path / "out"
    assert main(["hcp-task", str(path), str(out), "--allow-pickle"]) == 0
    assert _tsv(out, "100307", "emotion").is_file() and _tsv(out, "100307", "wm").is_file()
    assert read_tsv(_tsv(out, "100408", "motor", run=1)).shape == (32, N_SCHAEFER)
    assert read_tsv(_tsv(out, "100408", "motor", run=2)).shape == (33, N_SCHAEFER)
    assert _tsv(out, "100408", "wm").is_file()
    assert list(pd.read_csv(out / "participants.tsv", sep="\t").columns) == ["participant_id", "source_id"]


def test_hcp_task_release_filter(tmp_path, caplog):
    rng = np.random.default_rng(4)
    records = [
        {"subject": s, "roiTimeseries": _series(rng, N_SCHAEFER, 25), "task": t}
        for s in (1, 2, 3)
        for t in (0, 6)
    ]
    np.save(tmp_path / "task.npy", np.array(records, dtype=object), allow_pickle=True)
    pheno = _pheno(tmp_path / "pheno.csv", [1, 2, 3], ["M", "F", "M"], ["Q1", "Q2", "Q1"])
    out = tmp_path / "out"
    argv = ["hcp-task", str(tmp_path / "task.npy"), str(out), "--allow-pickle", "--pheno", str(pheno)]
    assert main([*argv, "--release-filter", "Q1"]) == 0
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-1", "sub-3"]
    participants = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str)
    assert participants["release"].tolist() == ["Q1", "Q1"] and participants["sex"].tolist() == ["M", "M"]
    assert "left out 2 scan(s): release not in --release-filter" in caplog.text


def test_dict_of_columns_and_pickled_table(tmp_path):
    rng = np.random.default_rng(5)
    series = [_series(rng, N_AAL, 40 + i) for i in range(4)]
    columns = {"subjects": ["a1", "a2", "a3", "a4"], "timeseries": series, "labels": [1, 0, 1, 0]}
    (tmp_path / "columns.pickle").write_bytes(pickle.dumps(columns))
    table = pd.DataFrame(
        {"PATNO": [11, 12, 13, 14], "roi_timeseries": series, "COHORT": ["PD", "HC", "PD", "HC"]}
    )
    (tmp_path / "table.pkl").write_bytes(pickle.dumps(table))
    for name in ("columns.pickle", "table.pkl"):
        out = tmp_path / name.split(".")[0]
        assert main(["ppmi", str(tmp_path / name), str(out), "--allow-pickle"]) == 0
        groups = pd.read_csv(out / "participants.tsv", sep="\t")["group"].tolist()
        assert groups == ["PD", "Control", "PD", "Control"]


def test_label_map_recodes_ppmi_cohort_codes(tmp_path, capsys):
    rng = np.random.default_rng(6)
    records = [{"id": i, "ts": _series(rng, N_AAL, 20), "cohort": c} for i, c in enumerate([1, 2, 1, 2, 3])]
    path = tmp_path / "ppmi.pickle"
    path.write_bytes(pickle.dumps(records))
    out = tmp_path / "out"
    assert main(["ppmi", str(path), str(out), "--allow-pickle"]) == 65
    assert "--label-map" in _error_line(capsys)
    assert not out.exists()
    assert (
        main(["ppmi", str(path), str(out), "--allow-pickle", "--label-map", "1=PD", "2=Control", "3=n/a"])
        == 0
    )
    groups = pd.read_csv(out / "participants.tsv", sep="\t", keep_default_na=False)["group"].tolist()
    assert groups == ["PD", "Control", "PD", "Control", "n/a"]


# --- pickle safety ---------------------------------------------------------------------------


def test_pickle_and_object_arrays_need_allow_pickle(tmp_path, capsys):
    (tmp_path / "ppmi.pickle").write_bytes(pickle.dumps([{"id": 1, "ts": np.zeros((N_AAL, 9))}]))
    np.save(tmp_path / "obj.npy", np.array([{"id": 1}], dtype=object), allow_pickle=True)
    for name in ("ppmi.pickle", "obj.npy"):
        assert main(["ppmi", str(tmp_path / name), str(tmp_path / "out")]) == 64
        line = _error_line(capsys)
        assert "--allow-pickle only for a file you trust" in line and "runs code" in line
    assert not (tmp_path / "out").exists()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# Hand-assembled pickles: pickle.dumps writes a function under its own module and name, an
# attacker writes whatever names the loader resolves (protocol 4 follows dots in a name).
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _gadget(name: str, tmp_path: Path, marker: Path) -> bytes:
    """A pickle (protocol 4) that writes ``marker`` while it loads, through ``name``."""
    touch = _text(f"touch {marker}")
    if name == "pandas.DataFrame.to_csv":  # pandas.DataFrame().to_csv(marker)
        body = _call(
            _global("pandas", "DataFrame.to_csv"), _call(_global("pandas", "DataFrame")), _text(str(marker))
        )
    elif name == "pandas.core.generic.NDFrame.to_csv":  # the same method under pickle's own spelling
        body = _call(
            _global("pandas.core.generic", "NDFrame.to_csv"),
            _call(_global("pandas.core.frame", "DataFrame")),
            _text(str(marker)),
        )
    elif name == "builtins.getattr":  # getattr(__import__("os"), "system")("touch marker")
        os_module = _call(_global("builtins", "__import__"), _text("os"))
        body = _call(_call(_global("builtins", "getattr"), os_module, _text("system")), touch)
    elif name == "numpy.load":  # numpy.load(inner, None, True): an unrestricted unpickling
        inner = tmp_path / "inner.npy"
        np.save(inner, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
        body = _call(_global("numpy", "load"), _text(str(inner)), b"N", b"\x88")
    elif name == "pandas.read_pickle":
        inner = tmp_path / "inner.pkl"
        inner.write_bytes(pickle.dumps(_Exploit(marker)))
        body = _call(_global("pandas", "read_pickle"), _text(str(inner)))
    elif name == "os.system":
        body = _call(_global("os", "system"), touch)
    else:  # pickle.dumps's own spelling of os.system
        return pickle.dumps([_Exploit(marker)])
    return b"\x80\x04" + body + b"."


GADGETS = [
    "pandas.DataFrame.to_csv",
    "pandas.core.generic.NDFrame.to_csv",
    "builtins.getattr",
    "numpy.load",
    "pandas.read_pickle",
    "os.system",
    "posix.system",
]


@pytest.mark.parametrize("container", [".pickle", ".npy"])
@pytest.mark.parametrize("gadget", GADGETS)
def test_restricted_unpickler_refuses_code_even_with_allow_pickle(tmp_path, capsys, gadget, container):
    marker = tmp_path / "written-by-the-pickle"
    data = _gadget(gadget, tmp_path, marker)
    pickle.loads(data)  # the gadget works: an unrestricted unpickler writes the file
    assert marker.exists()
    marker.unlink()

    path = tmp_path / f"evil{container}"
    with path.open("wb") as stream:
        if container == ".npy":  # an object array whose pickled body is the gadget
            np.lib.format.write_array_header_1_0(
                stream, {"descr": "|O", "fortran_order": False, "shape": (1,)}
            )
        stream.write(data)
    out = tmp_path / "out"
    assert main(["ppmi", str(path), str(out), "--allow-pickle"]) == 65
    line = _error_line(capsys)
    assert f"asks for {gadget} while loading" in line and "re-save the data" in line
    assert not marker.exists() and not out.exists()


def _dtype_frame() -> pd.DataFrame:
    """One column per dtype a phenotype or records table may hold; rows 0 and 2 (an integer index)."""
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "float": [0.5, np.nan, 2.5],
            "int": np.array([1, 2, 3], dtype=np.int16),
            "text": ["PD", "Control", "PD"],
            "series": [_series(rng, 3, 5), _series(rng, 3, 6), _series(rng, 3, 7)],
            "category": pd.Categorical(["M", "F", "M"]),
            "flag": [True, False, True],
            "date": pd.to_datetime(["2020-01-01", "2021-06-30", None]),
            "duration": pd.to_timedelta([1, 2, 3], unit="s"),
            "nullable_int": pd.array([1, None, 3], dtype="Int64"),
            "nullable_float": pd.array([0.5, None, 1.5], dtype="Float64"),
            "nullable_bool": pd.array([True, None, False], dtype="boolean"),
            "string": pd.array(["a", None, "c"], dtype="string"),
        }
    )
    return frame.iloc[[0, 2]]


def _roundtrip_objects() -> dict[str, object]:
    from collections import OrderedDict, defaultdict

    rng = np.random.default_rng(12)
    frame = _dtype_frame()
    by_subject = defaultdict(list)
    by_subject["sub-01"].append(_series(rng, 4, 9))
    return {
        "frame": frame,
        "multiindex": frame.set_index(["text", "int"]),
        "categorical_index": frame.set_index("category"),
        "date_index": frame.set_index("date"),
        "series": pd.Series([1.5, 2.5], index=["r1", "r2"], name="x"),
        "records": [
            {
                "subject_id": "PPMI_3001",
                "timeseries": _series(rng, 5, 8),
                "group": "PD",
                "age": np.float64(61),
            },
            {"subject_id": b"PPMI_3002", "ts": np.asfortranarray(_series(rng, 5, 9)), "visit": (1, 2j)},
        ],
        "arrays": {
            "int": np.arange(7, dtype=np.int32),
            "text": np.array(["a", "bc"]),
            "dates": np.array(["2020-01-01"], dtype="datetime64[D]"),
            "scalar": np.int64(3),
            "sets": [{1, 2}, frozenset({3}), bytearray(b"x"), range(2), slice(1, 2)],
        },
        "defaultdict": by_subject,
        "ordered": OrderedDict(b=_series(rng, 2, 3), a=pd.Series([1, 2])),
    }


def _assert_same(left, right) -> None:
    assert type(left) is type(right)
    if isinstance(left, pd.DataFrame):
        pd.testing.assert_frame_equal(left, right)
    elif isinstance(left, pd.Series):
        pd.testing.assert_series_equal(left, right)
    elif isinstance(left, np.ndarray):
        np.testing.assert_array_equal(left, right)
        assert left.dtype == right.dtype
    elif isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            _assert_same(left[key], right[key])
    elif isinstance(left, list | tuple):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            _assert_same(a, b)
    else:
        assert left == right


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_rebuilds_numpy_and_pandas_data(tmp_path, protocol):
    from neurossm_app.legacy.load import read_input

    for name, value in _roundtrip_objects().items():
        path = tmp_path / f"{name}.pickle"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        _assert_same(read_input(path, allow_pickle=True), value)
        array = np.empty(1, dtype=object)
        array[0] = value
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
        _assert_same(read_input(tmp_path / f"{name}.npy", allow_pickle=True)[0], value)


@pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")
def test_allowed_globals_are_exact_names_of_classes_and_reconstructors():
    """No dotted name, and nothing callable but classes and the reconstructors pickles name."""
    import importlib

    from neurossm_app.legacy.load import ALLOWED_GLOBALS

    reconstructors = {
        "_reconstruct",
        "scalar",
        "_frombuffer",
        "encode",
        "_new_Index",
        "_new_DatetimeIndex",
        "_unpickle_block",
        "__pyx_unpickle_NDArrayBacked",
        "_unpickle_timestamp",
        "_timedelta_unpickle",
        "_nat_unpickle",
        "__nat_unpickle",
        "new_block",
    }
    for module, name in ALLOWED_GLOBALS:
        assert "." not in name, (module, name)
        try:
            found = getattr(importlib.import_module(module.replace("__builtin__", "builtins")), name)
        except (ImportError, AttributeError):
            continue  # a place that older or newer numpy/pandas use
        assert isinstance(found, type) or found is pd.NA or name in reconstructors, (module, name)


# --- malformed inputs ------------------------------------------------------------------------


def _records_file(tmp_path: Path, records) -> Path:
    path = tmp_path / "in.pickle"
    path.write_bytes(pickle.dumps(records))
    return path


@pytest.mark.parametrize(
    ("records", "code", "message"),
    [
        ([{"id": 1, "ts": np.zeros((165, 30)) + 1, "group": "PD"}], 65, "atlas has 166 ROIs"),
        ([{"id": 1, "ts": [[1.0] * 30] * 165 + [[1.0] * 29], "group": "PD"}], 65, "ragged"),
        ([{"id": 1, "ts": np.full((N_AAL, 30), np.nan), "group": "PD"}], 65, "NaN or infinite"),
        ([{"id": 1, "ts": np.ones((N_AAL, 30)), "group": "maybe"}], 65, "group value 'maybe'"),
        ([{"id": 1, "group": "PD", "meta": {"x": 1}}], 65, "no 2D time series"),
        ([{"ts": np.ones((N_AAL, 30)), "group": "PD"}], 65, "no subject identifier"),
        ([{"id": 1, "ts": np.ones((N_AAL, 30))}], 65, "no group label"),
        ({"s1": "not an array"}, 65, "key 's1' holds a str"),
        (np.arange(10.0), 65, "expected a numeric subjects x ROIs x volumes array"),
        (
            [
                {"id": "x_1", "ts": np.ones((N_AAL, 9)), "group": 1},
                {"id": "x1", "ts": np.ones((N_AAL, 9)), "group": 1},
            ],
            65,
            "both become sub-x1",
        ),
    ],
)
def test_malformed_inputs_give_one_line_and_exit_code(tmp_path, capsys, records, code, message):
    out = tmp_path / "out"
    assert main(["ppmi", str(_records_file(tmp_path, records)), str(out), "--allow-pickle"]) == code
    assert message in _error_line(capsys)
    assert not out.exists()


def test_hcp_inputs_missing_pheno_subject_and_missing_files(tmp_path, capsys):
    rng = np.random.default_rng(7)
    np.save(tmp_path / "rest.npy", np.stack([_series(rng, N_SCHAEFER, 20) for _ in range(3)]))
    pd.DataFrame({"Subject": [1, 2, 3]}).to_csv(tmp_path / "samples.csv", index=False)
    pheno = _pheno(tmp_path / "pheno.csv", [1, 2], ["M", "F"])
    base = ["hcp-rest", str(tmp_path / "rest.npy"), str(tmp_path / "out")]
    assert main([*base, "--sample-table", str(tmp_path / "samples.csv"), "--pheno", str(pheno)]) == 65
    line = _error_line(capsys)
    assert "1 subject(s) of" in line and "not in --pheno" in line and "first: 3" in line
    assert main([*base, "--pheno", str(pheno)]) == 65  # a numeric array names no subjects
    assert "--sample-table" in _error_line(capsys)
    assert main(["hcp-rest", str(tmp_path / "nope.npy"), str(tmp_path / "out")]) == 66
    assert "does not exist" in _error_line(capsys)
    assert main([*base, "--sample-table", str(tmp_path / "samples.csv"), "--release-filter", "Q1"]) == 64
    assert "--release-filter needs --pheno" in _error_line(capsys)
    assert main([*base, "--tr", "-1"]) == 64
    assert not (tmp_path / "out").exists()


def test_missing_values_and_dead_rois(tmp_path):
    rng = np.random.default_rng(8)
    series = [_series(rng, N_AAL, 30) for _ in range(3)]
    series[0][:, 4] = np.nan  # a censored volume
    series[1][7] = 0.0  # a dead ROI, as the original extraction wrote ROIs outside the brain
    records = [{"id": i, "ts": s, "group": i % 2} for i, s in enumerate(series)]
    path = _records_file(tmp_path, records)
    out = tmp_path / "out"
    assert main(["ppmi", str(path), str(out), "--allow-pickle"]) == 0
    first = _tsv(out, "0", atlas="AAL3v2")
    assert read_tsv(first).iloc[4].isna().all()
    assert json.loads(first.with_suffix(".json").read_text())["CensoredVolumes"] == [4]
    second = _tsv(out, "1", atlas="AAL3v2")
    dead_roi = roi_names("aal3v2")[7]
    assert read_tsv(second)[dead_roi].isna().all()
    assert json.loads(second.with_suffix(".json").read_text())["ExcludedROIs"] == [dead_roi]
    skipped = tmp_path / "skipped"
    assert main(["ppmi", str(path), str(skipped), "--allow-pickle", "--skip-dead-roi-scans"]) == 0
    assert not (skipped / "sub-1").exists() and (skipped / "sub-2").is_dir()


# --- outputs are never lost ------------------------------------------------------------------


def test_reruns_keep_identical_files_and_refuse_changes_without_force(tmp_path, capsys):
    rng = np.random.default_rng(9)
    records = [{"id": i, "ts": _series(rng, N_AAL, 12), "group": i % 2} for i in range(2)]
    path = _records_file(tmp_path, records)
    out = tmp_path / "out"
    argv = ["ppmi", str(path), str(out), "--allow-pickle"]
    assert main(argv) == 0
    before = _files(out)
    assert main(argv) == 0
    assert "0 file(s) written" in capsys.readouterr().out
    assert _files(out) == before
    assert main([*argv, "--tr", "3.0"]) == 73  # the sidecars would change
    assert "--force" in _error_line(capsys)
    assert _files(out) == before
    assert main([*argv, "--tr", "3.0", "--force"]) == 0
    assert json.loads(next(out.rglob("*_timeseries.json")).read_text())["RepetitionTime"] == 3.0


def test_dry_run_writes_nothing(tmp_path, capsys):
    path = _records_file(tmp_path, [{"id": 1, "ts": np.ones((N_AAL, 5)), "group": "PD"}])
    assert main(["ppmi", str(path), str(tmp_path / "out"), "--allow-pickle", "--dry-run"]) == 0
    assert "1 scan(s) of 1 subject(s)" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


# --- the group level reads what was imported -------------------------------------------------


@pytest.mark.parametrize("preset", ["hcp-task", "ppmi"])
def test_group_level_finds_series_and_labels(tmp_path, preset):
    from neurossm_app.atlases import ATLASES
    from neurossm_app.group.data import find_timeseries, load_dataset
    from neurossm_app.group.presets import resolve_settings

    settings = resolve_settings(preset, {})
    n_rois = N_AAL if preset == "ppmi" else N_SCHAEFER
    rng = np.random.default_rng(10)
    labels = ["PD", "Control"] * 3 if preset == "ppmi" else [0, 1, 2, 3, 4, 5, 6]
    key = "group" if preset == "ppmi" else "task"
    records = [
        {"id": 1 + i // 2, "ts": _series(rng, n_rois, 21), key: label} for i, label in enumerate(labels)
    ]
    if preset == "ppmi":
        records = [{**r, "id": i} for i, r in enumerate(records)]
    out = tmp_path / "out"
    assert main([preset, str(_records_file(tmp_path, records)), str(out), "--allow-pickle"]) == 0
    label = ATLASES[settings.atlas].bids_label
    scans = find_timeseries(out, label)
    dataset = load_dataset(scans, settings.target, out / "participants.tsv", label)
    assert len(dataset.scans) == len(records)
    expected = ("Control", "PD") if preset == "ppmi" else HCP_TASKS
    assert dataset.classes == expected
    assert dataset.roi_names == roi_names(settings.atlas)


@pytest.mark.slow
def test_end_to_end_hcp_rest_npy_to_group_metrics(tmp_path, capsys):
    """A numeric hcp-rest-like .npy with a planted sex effect -> import -> group trains on it.

    Females share a slow oscillation in ROIs 0-2, so the fc-logreg baseline (correlations) ranks
    the held-out subjects right if, and only if, labels were joined to the right series (ROC-AUC 1.0
    in every fold here; about 0.25 with the pheno.csv sexes shuffled). The tiny NeuroSSM (3 epochs)
    only has to train and be evaluated, not to learn.
    """
    from neurossm_app.cli import main as app_main

    rng = np.random.default_rng(11)
    n_subjects, n_volumes = 12, 80
    sexes = ["F" if i % 2 == 0 else "M" for i in range(n_subjects)]
    data = np.empty((n_subjects, n_volumes, N_SCHAEFER), dtype=np.float32)  # time x ROI on disk
    time = np.arange(n_volumes)
    for i, sex in enumerate(sexes):
        series = rng.standard_normal((n_volumes, N_SCHAEFER))
        if sex == "F":
            series[:, :3] += 2.0 * np.sin(2 * np.pi * 0.07 * time + rng.uniform(0, 6))[:, None]
        data[i] = series
    np.save(tmp_path / "dataset_hcpRest_schaefer.npy", data)
    subjects = [f"{100000 + 7 * i}" for i in range(n_subjects)]
    pd.DataFrame({"Subject": subjects}).to_csv(tmp_path / "order.csv", index=False)
    shuffled = rng.permutation(n_subjects)  # pheno rows in another order than the array
    pheno = _pheno(tmp_path / "pheno.csv", [subjects[i] for i in shuffled], [sexes[i] for i in shuffled])
    out = tmp_path / "out"
    argv = ["hcp-rest", str(tmp_path / "dataset_hcpRest_schaefer.npy"), str(out), "--pheno", str(pheno)]
    assert main([*argv, "--sample-table", str(tmp_path / "order.csv")]) == 0

    group = [str(out), str(out), "group", "--preset", "hcp-rest", "--dynamic-length", "64", "--epochs", "3"]
    group += ["--d-model", "8", "--n-layers", "1", "--d-state", "4", "--folds", "3", "--seeds", "0"]
    assert app_main([*group, "--device", "cpu", "--baselines", "fc-logreg"]) == 0
    metrics = pd.read_csv(out / "group" / "hcp-rest" / "metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"neurossm", "fc-logreg"}
    assert len(metrics[metrics["model"] == "neurossm"]) == 3
    baseline = metrics[metrics["model"] == "fc-logreg"]
    assert baseline["roc_auc"].mean() >= 0.9, metrics


# --- grouping columns (issue 24) --------------------------------------------------------------


def test_sample_table_person_column_reaches_participants_and_cv_group(tmp_path, capsys):
    """Windows of one person with both labels: one subject per window, grouped by ``person``."""
    from neurossm_app.group.splits import build_splits, fold_groups

    rng = np.random.default_rng(11)
    n_people, windows = 5, 4
    np.save(tmp_path / "windows.npy", rng.standard_normal((n_people * windows, N_AAL, 23)).astype(np.float32))
    table = pd.DataFrame(
        {
            "subject": [f"P{p}w{w}" for p in range(n_people) for w in range(windows)],
            "group": ["PD", "Control"] * (n_people * windows // 2),
            "Person": [f"P{p}" for p in range(n_people) for _ in range(windows)],
        }
    )
    table.to_csv(tmp_path / "samples.csv", index=False)
    out = tmp_path / "out"
    argv = ["ppmi", str(tmp_path / "windows.npy"), str(out), "--sample-table", str(tmp_path / "samples.csv")]
    assert main(argv) == 0
    participants = pd.read_csv(out / "participants.tsv", sep="\t", dtype=str)
    assert list(participants.columns) == ["participant_id", "group", "person", "source_id"]
    assert participants.set_index("participant_id").loc["sub-P3w1", "person"] == "P3"
    assert "--cv-group person" in json.loads((out / "participants.json").read_text())["person"]["Description"]

    subjects = [s.removeprefix("sub-") for s in participants["participant_id"]]
    groups = fold_groups(subjects, "person", out / "participants.tsv")
    labels = (participants["group"] == "PD").to_numpy().astype(int)
    splits = build_splits(
        subjects, subjects, list(participants["group"]), labels, (0,), 5, False, 0.2, None, groups
    )
    assert splits.groupby("group")["test_fold"].nunique().max() == 1
    assert splits.groupby("test_fold")["label"].nunique().min() == 2  # each person holds both labels

    table.loc[4, "subject"] = "P0w0"  # the same subject (and label) in two people
    table.to_csv(tmp_path / "samples.csv", index=False)
    assert main([*argv, "--force"]) == 65
    assert "two person values" in _error_line(capsys)
