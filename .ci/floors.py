"""Print a pip constraints file pinning every dependency of pyproject.toml to its declared lower bound.

``.ci/run`` installs the project once with these constraints, so the suite runs at the lowest versions the package
says it supports (the floors). Only ``name>=X`` bounds are pinned (to ``name==X``); transitive dependencies resolve
freely. Extra arguments ``name==X`` override or add pins (``.ci/run`` passes the torch build of the machine).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*[^;]*?>=\s*([^,;\s]+)")


def floors(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = LOWER_BOUND.match(requirement)
        if match and match.group(1).lower() != project["name"].lower():
            pins[match.group(1).lower()] = match.group(2)
    return pins


def main(argv: list[str]) -> None:
    pins = floors(Path(__file__).resolve().parent.parent / "pyproject.toml")
    for extra in argv:
        name, _, version = extra.partition("==")
        pins[name.lower()] = version
    print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
