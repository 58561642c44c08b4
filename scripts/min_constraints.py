"""Print pip constraints that pin every ``install_requires`` floor of setup.cfg exactly.

``numpy>=1.24.1`` becomes ``numpy==1.24.1``, so that ``pip install -c`` of the output installs the
lowest versions the package declares (scripts/min-versions.sh tests them). A requirement without a
``>=`` floor is an error: every dependency must say which version it needs. torch is left out: CI
installs the pinned CPU wheel (``torch==2.13.0``) instead of the declared floor.

Usage: python scripts/min_constraints.py [setup.cfg] > constraints.txt
"""

from __future__ import annotations

import configparser
import re
import sys

#: Not pinned to its floor: the CPU wheel is pinned by the Makefile and this script's caller.
UNPINNED = {"torch"}
_FLOOR = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*(?P<version>[^,;\s]+)\s*(?P<marker>;.*)?$")


def floors(setup_cfg: str) -> list[tuple[str, str, str]]:
    """``(name, floor, marker)`` of each ``install_requires`` line, in file order."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    found = []
    for line in config["options"]["install_requires"].strip().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        match = _FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"{setup_cfg}: '{requirement}' has no single '>=' floor; give it one.")
        found.append((match["name"], match["version"], (match["marker"] or "").strip()))
    return found


def main(argv: list[str]) -> int:
    setup_cfg = argv[0] if argv else "setup.cfg"
    print(f"# Generated from {setup_cfg} install_requires by scripts/min_constraints.py; do not edit.")
    for name, version, marker in floors(setup_cfg):
        if name.lower() not in UNPINNED:
            print(f"{name}=={version}{' ' + marker if marker else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
