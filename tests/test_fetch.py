"""``neurossm-app-fetch``: offline checks on a synthetic atlas cache, and the fetch calls.

TemplateFlow reads ``TEMPLATEFLOW_HOME`` when imported, so ``--check`` runs in subprocesses with
their own environment. Downloads cannot run here (no network): the fetchers are replaced by fakes
that record how they were called and write what the real ones would.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from neurossm_app import fetch
from neurossm_app.errors import EX_CANTCREAT, EX_NOINPUT, EX_USAGE


def run_fetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m neurossm_app.fetch ARGS`` in a fresh process, offline."""
    environment = {k: v for k, v in os.environ.items() if k not in ("TEMPLATEFLOW_HOME", "NILEARN_DATA")}
    environment |= {"NIPYPE_NO_ET": "1", "TEMPLATEFLOW_AUTOUPDATE": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "neurossm_app.fetch", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory) -> Path:
    """A fresh synthetic atlas cache (``templateflow/`` and ``nilearn_data/``), as the container's
    synthetic-atlas build installs it: ``--check`` must find both templates' Schaefer files."""
    from neurossm_app.synthetic.atlas import install_atlases

    cache = tmp_path_factory.mktemp("fetch") / "cache"
    install_atlases(cache)
    return cache


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------


def test_check_passes_on_synthetic_cache_from_the_environment(synthetic_cache):
    before = _listing(synthetic_cache)
    result = run_fetch(
        "--check",
        env={
            "TEMPLATEFLOW_HOME": str(synthetic_cache / "templateflow"),
            "NILEARN_DATA": str(synthetic_cache / "nilearn_data"),
        },
    )
    assert result.returncode == 0, result.stderr
    ok = [line for line in result.stdout.splitlines() if line.startswith("ok: ")]
    # Schaefer in both templates the BOLD runs may be in and as the fsLR dlabel, AAL3v2 once
    assert [line.split(":")[1].strip() for line in ok] == [
        *["schaefer400"] * 3,
        *["schaefer400-7n"] * 3,
        "aal3v2",
    ]
    assert "tpl-MNI152NLin2009cAsym" in ok[0] and "tpl-MNI152NLin6Asym" in ok[1]
    assert "tpl-fsLR_atlas-Schaefer2018_den-32k" in ok[2] and "400 regions" in ok[2]
    assert "400 regions" in ok[0] and "166 regions" in ok[6]
    assert "Traceback" not in result.stderr
    assert _listing(synthetic_cache) == before, "--check must not write into the caches"


def test_check_fails_with_66_and_one_line_per_missing_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_fetch(
        "--check",
        "--templateflow-home",
        str(empty / "templateflow"),
        "--nilearn-data",
        str(empty / "nilearn_data"),
    )
    assert result.returncode == EX_NOINPUT == 66
    lines = result.stderr.strip().splitlines()
    # res-02 volume + label table for each Schaefer atlas in each template, its fsLR dlabel, volume +
    # XML for AAL3v2
    assert len(lines) == 12, result.stderr
    assert sum("tpl-MNI152NLin6Asym_res-02_atlas-Schaefer2018" in line for line in lines) == 2
    assert all(line.startswith("neurossm-app-fetch: missing: ") for line in lines)
    schaefer = next(line for line in lines if "schaefer400:" in line)
    assert "res-02_atlas-Schaefer2018_desc-400Parcels17Networks_dseg.nii.gz" in schaefer
    assert f"neurossm-app-fetch --atlas schaefer400 --templateflow-home {empty / 'templateflow'}" in schaefer
    assert any("AAL3v1.nii" in line and "--nilearn-data" in line for line in lines)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(empty.iterdir()) == [], "--check must not create a TemplateFlow skeleton"


def test_check_only_the_requested_atlas(synthetic_cache, tmp_path, capsys):
    # AAL3v2 present, Schaefer absent: checking aal3v2 passes, checking all does not. In-process is
    # fine here: only AAL3v2 gets resolved, and nilearn takes its directory as an argument.
    templateflow, nilearn_data = tmp_path / "templateflow", synthetic_cache / "nilearn_data"
    assert fetch.check(["aal3v2"], templateflow, nilearn_data) == []
    problems = fetch.check(["schaefer400", "schaefer400-7n", "aal3v2"], templateflow, nilearn_data)
    assert len(problems) == 10 and all(p.startswith("missing: schaefer400") for p in problems)
    assert capsys.readouterr().out.count("ok: aal3v2: 166 regions") == 2


def test_empty_placeholders_count_as_missing(synthetic_cache, tmp_path):
    # TemplateFlow's skeleton holds zero-byte files for everything not yet downloaded.
    files = [
        p
        for space in fetch.SPACES
        for p in fetch.atlas_files("schaefer400", tmp_path / "tf", tmp_path / "nl", space=space)
    ]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    problems = fetch.check(["schaefer400"], tmp_path / "tf", tmp_path / "nl")
    # the four placeholders, and the fsLR dlabel that is not there at all
    assert len(problems) == 5 and all(p.startswith("missing: schaefer400: ") for p in problems)


def test_check_neurosynth_files(tmp_path, capsys):
    problems = fetch.check([], tmp_path / "tf", tmp_path / "nl", neurosynth=tmp_path / "ns")
    assert len(problems) == len(fetch.NEUROSYNTH_FILES)
    assert all("--neurosynth" in p for p in problems)
    for path in fetch.neurosynth_files(tmp_path / "ns"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert fetch.check([], tmp_path / "tf", tmp_path / "nl", neurosynth=tmp_path / "ns") == []
    assert "ok: neurosynth" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Usage errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--atlas", "schaefer150"], "invalid choice"), (["--atlas", "none", "aal3v2"], "cannot be combined")],
)
def test_usage_errors_exit_64_with_one_line(args, message, capsys):
    try:
        code = fetch.main(args)
    except SystemExit as stop:
        code = stop.code
    assert code == EX_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("neurossm-app-fetch: error: ")


def test_atlas_keys():
    assert fetch._atlas_keys(["all"]) == ["schaefer400", "schaefer400-7n", "aal3v2"]
    assert fetch._atlas_keys(["aal3v2", "schaefer400", "aal3v2"]) == ["schaefer400", "aal3v2"]
    assert fetch._atlas_keys(["none"]) == []


# --------------------------------------------------------------------------------------------
# Fetching, with fake fetchers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_templateflow(monkeypatch):
    """Replace ``templateflow`` with a fake whose ``api.get`` records calls and writes files."""
    calls: list[dict] = []
    state = {"fail": None}

    def get(template, **query):
        calls.append({"template": template, **query})
        if state["fail"]:
            raise state["fail"]
        home = Path(os.environ["TEMPLATEFLOW_HOME"])
        res = f"_res-{query['resolution']:02d}" if "resolution" in query else ""
        den = f"_den-{query['density']}" if "density" in query else ""
        entities = f"atlas-{query['atlas']}{den}_desc-{query['desc']}_{query['suffix']}{query['extension']}"
        name = f"tpl-{template}{res}_{entities}"
        path = home / f"tpl-{template}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"fake")
        return path

    api = types.ModuleType("templateflow.api")
    api.get = get
    package = types.ModuleType("templateflow")
    package.api = api
    monkeypatch.setitem(sys.modules, "templateflow", package)
    monkeypatch.setitem(sys.modules, "templateflow.api", api)
    monkeypatch.delitem(sys.modules, "templateflow.conf", raising=False)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", os.environ.get("TEMPLATEFLOW_HOME", ""))  # restored afterwards
    return calls, state


def test_fetch_schaefer_gets_both_resolutions_and_the_table(fake_templateflow, tmp_path, capsys):
    calls, _ = fake_templateflow
    home = tmp_path / "tf"
    assert fetch.main(["--atlas", "schaefer400-7n", "--templateflow-home", str(home)]) == 0
    assert os.environ["TEMPLATEFLOW_HOME"] == str(home)
    volumes = [c for c in calls if c["extension"] == ".nii.gz"]
    assert sorted((c["template"], c["resolution"]) for c in volumes) == [
        ("MNI152NLin2009cAsym", 1),
        ("MNI152NLin2009cAsym", 2),
        ("MNI152NLin6Asym", 1),
        ("MNI152NLin6Asym", 2),
    ]
    tables = [c["template"] for c in calls if c["extension"] == ".tsv"]
    assert sorted(tables) == ["MNI152NLin2009cAsym", "MNI152NLin6Asym"]
    assert all(c["atlas"] == "Schaefer2018" and c["desc"] == "400Parcels7Networks" for c in calls)
    assert [c for c in calls if c["extension"] == ".tsv" and "resolution" not in c]
    dlabels = [c for c in calls if c["extension"] == ".dlabel.nii"]  # for --space fsLR
    assert [(c["template"], c["density"]) for c in dlabels] == [("fsLR", "32k")]
    out = capsys.readouterr().out
    assert out.startswith("fetched: schaefer400-7n: ") and "res-01" in out and "res-02" in out


def test_fetch_schaefer_failure_is_one_line_66(fake_templateflow, tmp_path, capsys):
    _, state = fake_templateflow
    state["fail"] = RuntimeError("Could not fetch template files: x.\n  more detail")
    code = fetch.main(["--atlas", "schaefer400", "--templateflow-home", str(tmp_path / "tf")])
    assert code == EX_NOINPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download schaefer400 from TemplateFlow" in err[0]


def test_fetch_refuses_a_templateflow_imported_elsewhere(monkeypatch, tmp_path):
    conf = types.ModuleType("templateflow.conf")
    conf.TF_HOME = tmp_path / "other"
    monkeypatch.setitem(sys.modules, "templateflow.conf", conf)
    with pytest.raises(fetch.UsageError, match="already imported"):
        fetch._set_templateflow_home(tmp_path / "wanted")


@pytest.fixture
def fake_aal(monkeypatch):
    import nilearn.datasets

    calls: list[dict] = []

    def fetch_atlas_aal(version, data_dir, **kwargs):
        calls.append({"version": version, "data_dir": data_dir, **kwargs})
        for path in fetch.atlas_files("aal3v2", Path(), Path(data_dir)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"fake")

    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_aal", fetch_atlas_aal)
    return calls


def test_fetch_aal_uses_nilearn_with_version_3v2(fake_aal, tmp_path, capsys):
    assert fetch.main(["--atlas", "aal3v2", "--nilearn-data", str(tmp_path / "nl")]) == 0
    assert fake_aal == [{"version": "3v2", "data_dir": str(tmp_path / "nl"), "verbose": 1}]
    assert "aal_3v2/AAL3/AAL3v1.nii" in capsys.readouterr().out


def test_unwritable_target_exits_73(fake_aal, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert fetch.main(["--atlas", "aal3v2", "--nilearn-data", str(blocker / "nl")]) == EX_CANTCREAT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurossm-app-fetch: error: cannot create")


@pytest.fixture
def fake_nimare(monkeypatch):
    """A fake ``nimare.extract`` (the real one takes seconds to import)."""
    calls: list[dict] = []

    def fetch_neurosynth(data_dir=None, **kwargs):
        calls.append({"data_dir": data_dir, **kwargs})
        for path in fetch.neurosynth_files(Path(data_dir)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"fake")

    extract = types.ModuleType("nimare.extract")
    extract.fetch_neurosynth = fetch_neurosynth
    package = types.ModuleType("nimare")
    package.extract = extract
    monkeypatch.setitem(sys.modules, "nimare", package)
    monkeypatch.setitem(sys.modules, "nimare.extract", extract)
    return calls


def test_fetch_neurosynth_only(fake_nimare, tmp_path, capsys):
    assert fetch.main(["--atlas", "none", "--neurosynth", str(tmp_path / "ns")]) == 0
    assert fake_nimare == [
        {
            "data_dir": str(tmp_path / "ns"),
            "version": "7",
            "source": "abstract",
            "vocab": "terms",
            "return_type": "files",
        }
    ]
    assert capsys.readouterr().out.strip() == f"fetched: neurosynth: {tmp_path / 'ns' / 'neurosynth'}"


def _nimare_dir() -> Path:
    spec = importlib.util.find_spec("nimare")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_neurosynth_files_match_nimare_manifest():
    manifest = json.loads((_nimare_dir() / "resources" / "database_file_manifest.json").read_text())
    version = fetch.NEUROSYNTH_QUERY["version"]
    database = next(
        d for d in manifest if d["coordinates"] == f"data-neurosynth_version-{version}_coordinates.tsv.gz"
    )
    features = next(
        f
        for f in database["features"]
        if f"vocab-{fetch.NEUROSYNTH_QUERY['vocab']}_source-{fetch.NEUROSYNTH_QUERY['source']}_"
        in f["features"]
    )
    expected = {database["coordinates"], database["metadata"], *features.values()}
    assert expected == set(fetch.NEUROSYNTH_FILES)


def test_nimare_fetch_neurosynth_accepts_our_arguments():
    # Read the signature from the source: importing nimare takes seconds.
    tree = ast.parse((_nimare_dir() / "extract" / "extract.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fetch_neurosynth")
    names = {a.arg for a in function.args.args}
    assert {"data_dir", "version", "return_type"} <= names
    assert function.args.kwarg is not None  # source=, vocab= go through **kwargs
