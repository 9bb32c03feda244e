"""Dependency direction of the package, one way (issue 17), checked by reading every module's imports (``ast``),
lazy imports inside functions included:

    configuration, audio_codes  <-  modeling (model, audio tokenizer, code2wav, generation, streamer)
                                <-  processing (independent of modeling: neither imports the other)
    <-  conversion, tiny_random, audio_encoding  <-  loading, parity  <-  chat (the engine)  <-  cli / demo

``cli`` launches the app (``baichuan-audio demo`` is a sub-command), so it may import ``demo``; ``demo`` never imports
``cli``. ``training`` sits beside the front ends (it may use everything below ``chat``). ``serving`` (the HTTP API) and
``evaluation`` are front ends on the ``chat`` engine like ``demo``: ``cli`` launches them, they never import ``cli``,
``demo``, ``training`` or each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import transformers_baichuan_audio

PACKAGE = "transformers_baichuan_audio"
SRC = Path(transformers_baichuan_audio.__file__).parent

BELOW_MODELING = {"configuration", "audio_codes"}
FRONT = {"chat", "cli", "demo", "training", "serving", "evaluation"}
#: first component of a module name -> the first components it must never import
FORBIDDEN: dict[str, set[str]] = {
    "configuration": {"modeling", "processing", "conversion", "loading", "parity", "tiny_random", "audio_encoding"}
    | FRONT,
    "audio_codes": {"configuration", "modeling", "processing", "conversion", "loading", "parity", "tiny_random"}
    | {"audio_encoding"}
    | FRONT,
    "modeling": {"processing", "conversion", "loading", "parity", "tiny_random", "audio_encoding", "registration"}
    | FRONT,
    "processing": {"modeling", "conversion", "loading", "parity", "tiny_random", "audio_encoding", "registration"}
    | FRONT,
    "conversion": {"loading", "parity"} | FRONT,
    "tiny_random": {"conversion", "loading", "parity"} | FRONT,
    "audio_encoding": {"conversion", "loading", "parity", "tiny_random"} | FRONT,
    "loading": {"parity"} | FRONT,
    "parity": {"loading"} | FRONT,
    "chat": {"cli", "demo", "training", "parity", "serving", "evaluation"},
    "demo": {"cli", "training", "parity", "serving", "evaluation"},
    "training": {"chat", "cli", "demo", "parity", "serving", "evaluation"},
    "serving": {"cli", "demo", "training", "parity", "evaluation"},
    "evaluation": {"cli", "demo", "training", "parity", "serving"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path, existing: set[str]) -> set[str]:
    """Package-relative names of every module of the package that ``path`` imports, anywhere in the file (top level,
    functions, ``TYPE_CHECKING`` blocks); ``""`` is the package root (``import transformers_baichuan_audio``).
    ``from M import x`` counts as importing ``M.x`` when that is a module of ``existing``, else ``M``."""
    name = module_name(path, root)
    here = name.split(".") if name else []
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            pairs = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join([PACKAGE, *base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            pairs = [(module, [a.name for a in node.names])]
        else:
            continue
        for module, names in pairs:
            if module != PACKAGE and not module.startswith(PACKAGE + "."):
                continue
            rel = module[len(PACKAGE) + 1 :]
            subs = [f"{rel}.{n}" if rel else n for n in names]
            resolved = [m for m in subs if m in existing]
            found.update(resolved)
            if len(resolved) < len(subs) or not names:
                found.add(rel)
    return found


def violations(root: Path) -> list[str]:
    modules = {p: module_name(p, root) for p in sorted(root.rglob("*.py"))}
    existing = set(modules.values())
    out = []
    for path, name in modules.items():
        layer = name.split(".")[0]
        if layer not in FORBIDDEN:
            continue
        for target in sorted(imported_modules(path, root, existing)):
            if target == "":
                out.append(f"{name} imports the package root (it imports every layer)")
            elif target.split(".")[0] in FORBIDDEN[layer]:
                out.append(f"{name} imports {target}")
    return out


def test_package_imports_go_one_way():
    assert violations(SRC) == []


def test_the_layers_exist():
    """Every layer named in the rules is a module or package of the tree (a renamed room must update the rules)."""
    names = {module_name(p, SRC).split(".")[0] for p in SRC.rglob("*.py")}
    assert set(FORBIDDEN) <= names
    assert {"modeling.streamer", "processing.processor", "chat", "demo", "cli"} <= {
        module_name(p, SRC) for p in SRC.rglob("*.py")
    }


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for d in [root, *root.rglob("*")]:
        if d.is_dir() and not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("")
    return root


@pytest.mark.parametrize(
    "rel, text, expected",
    [
        ("processing/processor.py", "from ..modeling.model import f\n", "processing.processor imports modeling.model"),
        ("modeling/tok.py", "def f():\n    from ..processing import fe\n", "modeling.tok imports processing.fe"),
        ("modeling/m.py", "import transformers_baichuan_audio.conversion.convert\n", "modeling.m imports conversion"),
        ("modeling/m.py", "from .. import cli\n", "modeling.m imports cli"),
        ("demo.py", "def main():\n    from .cli import main\n", "demo imports cli"),
        ("chat.py", "from . import demo\n", "chat imports demo"),
        ("modeling/m.py", "import transformers_baichuan_audio\n", "modeling.m imports the package root"),
    ],
)
def test_checker_finds_violations(tmp_path, rel, text, expected):
    base = {
        "modeling/model.py": "",
        "processing/fe.py": "",
        "conversion/convert.py": "",
        "cli.py": "",
        "demo.py": "",
        "chat.py": "",
    }
    root = _tree(tmp_path, {**base, rel: text})
    found = violations(root)
    assert any(v.startswith(expected) for v in found), found


def test_checker_allows_the_direction(tmp_path):
    root = _tree(
        tmp_path,
        {
            "configuration.py": "",
            "modeling/model.py": "from ..configuration import C\nfrom ..audio_codes import f\n",
            "processing/fe.py": "from ..configuration import C\n",
            "conversion/convert.py": "def f():\n    from ..modeling.model import M\n",
            "chat.py": "from .processing.fe import F\nfrom . import loading\n",
            "loading.py": "",
            "audio_codes.py": "",
            "demo.py": "from .chat import S\n",
            "cli.py": "def f():\n    from .demo import serve\n",
        },
    )
    assert violations(root) == []
