"""The documentation keeps up with the code: every option is in docs/usage.md, every link resolves.

docs/usage.md is read by sections (``## `` headings): options of ``neurossm-synth``,
``neurossm-app-fetch`` and ``neurossm-app-export`` must appear in a section whose heading names
that command; options of ``neurossm-app`` anywhere else. So ``--seed`` of ``neurossm-synth``
does not stand in for the group-level ``--seed``.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
USAGE = DOCS / "usage.md"
OTHER_COMMANDS = ("neurossm-synth", "neurossm-app-fetch", "neurossm-app-export")


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "neurossm-app":
        from neurossm_app.cli.parser import build_parser
    elif command == "neurossm-synth":
        from neurossm_app.synthetic.cli import build_parser
    elif command == "neurossm-app-export":
        from neurossm_app.cli.export import build_parser
    else:
        from neurossm_app.fetch import build_parser
    return build_parser()


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--long`` option string, spelled with dashes (underscore aliases are the same option)."""
    found = []
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                spelled = "--" + option[2:].replace("_", "-")
                if spelled not in found:
                    found.append(spelled)
    return found


def usage_sections() -> dict[str, str]:
    """docs/usage.md text per command: the sections naming another command go to that command."""
    text = USAGE.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    sections = {"neurossm-app": "", **dict.fromkeys(OTHER_COMMANDS, "")}
    for part in parts:
        heading = part.splitlines()[0] if part.startswith("## ") else ""
        owner = next((c for c in OTHER_COMMANDS if re.search(rf"`{c}`", heading)), "neurossm-app")
        sections[owner] += part
    return sections


def documented(option: str, text: str) -> bool:
    # whole option only: --atlas must not be satisfied by --atlas-dir
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", ["neurossm-app", *OTHER_COMMANDS])
def test_every_option_is_in_usage_md(command):
    text = usage_sections()[command]
    options = long_options(_parser(command))
    assert options, f"no options found for {command}"
    missing = [option for option in options if not documented(option, text)]
    where = (
        "docs/usage.md" if command == "neurossm-app" else f"a docs/usage.md section titled with `{command}`"
    )
    assert not missing, f"{command} options missing from {where}: {', '.join(missing)}"


def test_option_walk_sees_underscore_aliases_and_groups():
    options = long_options(_parser("neurossm-synth"))
    assert "--voxel-size" in options and "--voxel_size" not in options
    app = long_options(_parser("neurossm-app"))
    assert {"--participant-label", "--atlas", "--preset", "--version"} <= set(app)
    assert documented("--atlas", "use `--atlas-dir`") is False
    assert documented("--atlas", "`--atlas {a,b}`") is True


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links outside code that are neither URLs nor in-page anchors."""
    text = _CODE.sub("", text)
    targets = [m.group(1) for m in _LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def _anchors(path: Path) -> set[str]:
    """GitHub-style heading anchors of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            anchors.add(title)
    return anchors


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page.read_text()):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_link_reader():
    sample = "see [a](usage.md#exit-codes), [b](https://x.org), ![img](pic.png), `[c](nope.md)`, [d](#top)"
    assert relative_links(sample) == ["usage.md#exit-codes"]


# --------------------------------------------------------------------------------------------
# docs/hpc.md: the job scripts call the app with options it has
# --------------------------------------------------------------------------------------------


def _bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL)


#: Example values of the shell variables the job scripts pass to the app (others are paths).
_SHELL_VALUES = {"SLURM_CPUS_PER_TASK": "4", "SUBJECT": "sub-01", "FOLDS": "5", "FOLD": "3", "SEED": "1"}


def _app_calls(script: str) -> list[list[str]]:
    """Arguments after the image in each ``apptainer run ... IMAGE.sif ARGS`` of a script."""
    joined = script.replace("\\\n", " ").replace('"${SEEDS[@]}"', "0 1 2")
    joined = re.sub(r"\$\{?(\w+)\}?", lambda m: _SHELL_VALUES.get(m.group(1), m.group(0)), joined)
    calls = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["apptainer", "run"]:
            image = next(i for i, w in enumerate(words) if w.endswith(".sif") or w == "$SIF")
            calls.append(words[image + 1 :])
    return calls


def test_hpc_scripts_cover_both_levels():
    blocks = [b for b in _bash_blocks(DOCS / "hpc.md") if "#SBATCH" in b]
    assert len(blocks) >= 3
    levels = []
    for block in blocks:
        assert block.startswith("#!/bin/bash\n") and "set -euo pipefail" in block
        for args in _app_calls(block):
            assert "--cleanenv" in block and "-B" in block and "-w" in args
            levels.append(args[2])
            opts = _parser("neurossm-app").parse_args(args)  # every option exists and parses
            if args[2] == "participant":
                assert "--participant-label" in args and "SLURM_ARRAY_TASK_ID" in block
            elif opts.fold is not None:
                assert "--nv" in block and "--gres=gpu:1" in block and "--seed" in args
    assert levels.count("participant") == 1 and levels.count("group") == 2
    submit = next(b for b in _bash_blocks(DOCS / "hpc.md") if "sbatch --parsable" in b)
    assert submit.count("--dependency=afterok:") == 2
