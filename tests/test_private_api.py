"""The package uses no private (underscore) names of the libraries it plugs into.

A plugin that reaches into transformers / trl / peft / gradio internals breaks on their next release (and then has
to cap their versions). Every source file under ``src/`` (and the scripts under ``benchmarks/``, ``examples/`` and
``spaces/``) is parsed and three kinds of use are checked:

* imports: ``from transformers.x import _name``, ``import torch._dynamo``, ``from transformers._x import y``;
* attribute chains rooted at an imported library name: ``torch._weight_norm``, ``transformers.utils._x``;
* attributes that this package never defines itself: ``obj._name`` where ``_name`` is not assigned, defined or
  declared anywhere in ``src/`` (so it can only come from a library, e.g. an inherited private method such as
  ``self._torch_extract_fbank_features``) and the same names read through ``getattr`` / ``hasattr`` / ``delattr``.

torch's private compiler settings are allowed in ``modeling/compile_settings.py`` only (torch has no public API for
them); ``ALLOWED_ATTRIBUTES`` lists the single documented exception for transformers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "transformers_baichuan_audio"
LIBRARIES = ("transformers", "trl", "peft", "gradio", "torch")
#: The only file allowed to use torch-private names (compiler settings, with fallbacks).
TORCH_PRIVATE_MODULE = SRC / "modeling" / "compile_settings.py"
#: Private attributes of library objects that model code has to use, each with its reason.
ALLOWED_ATTRIBUTES = {
    # transformers' attention-interface hook: how every model picks its attention kernel
    # (ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)); there is no public reader.
    "_attn_implementation",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _string_arg(call: ast.Call, index: int) -> str | None:
    if (
        len(call.args) > index
        and isinstance(call.args[index], ast.Constant)
        and isinstance(call.args[index].value, str)
    ):
        return call.args[index].value
    return None


def defined_names(trees: dict[Path, ast.AST]) -> set[str]:
    """Every name the package itself defines: functions, classes, arguments, assigned names and attributes, imported
    aliases, ``setattr(x, "name", ...)``, ``register_buffer("name", ...)`` and ``__dict__["name"]`` stores."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and not any(node.name.startswith(lib) for lib in LIBRARIES):
                names.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, ast.Call):
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if fname == "setattr" and (name := _string_arg(node, 1)):
                    names.add(name)
                elif fname in ("register_buffer", "register_parameter", "add_module") and (
                    name := _string_arg(node, 0)
                ):
                    names.add(name)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                    names.add(node.slice.value)
    return names


def private_uses(path: Path, tree: ast.AST, own_names: set[str]) -> list[str]:
    """``"file:line what"`` for every private library name ``tree`` uses."""
    found: list[str] = []
    libs: dict[str, str] = {}  # local name -> library it is bound to
    where = f"{path.relative_to(SRC.parent.parent)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                lib = alias.name.split(".")[0]
                if lib in LIBRARIES:
                    libs[alias.asname or lib] = lib
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{where}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            lib = node.module.split(".")[0]
            if lib in LIBRARIES:
                for alias in node.names:
                    libs[alias.asname or alias.name] = lib
                    if any(_private(part) for part in node.module.split(".")) or _private(alias.name):
                        found.append(f"{where}:{node.lineno} from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _private(node.attr):
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            from_library = isinstance(root, ast.Name) and root.id in libs
            if (from_library or node.attr not in own_names) and node.attr not in ALLOWED_ATTRIBUTES:
                found.append(f"{where}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "hasattr", "delattr") and (name := _string_arg(node, 1)):
                if _private(name) and name not in own_names and name not in ALLOWED_ATTRIBUTES:
                    found.append(f"{where}:{node.lineno} {node.func.id}(..., {name!r})")
    return found


def scan(files: list[Path]) -> dict[Path, list[str]]:
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in files}
    own = defined_names(trees)
    return {path: private_uses(path, tree, own) for path, tree in trees.items()}


def test_no_private_library_names_in_src():
    files = sorted(SRC.rglob("*.py"))
    assert TORCH_PRIVATE_MODULE in files
    offences = []
    for path, uses in scan(files).items():
        if path == TORCH_PRIVATE_MODULE:
            # torch-private compiler settings are its job; any other library's private names are not
            uses = [u for u in uses if "torch" not in u.split(" ", 1)[1]]
        offences += uses
    assert not offences, "private library names used in src/ (use public API):\n" + "\n".join(offences)


def test_no_private_library_names_in_the_shipped_scripts():
    """The benchmarks, examples and the Space run against the same libraries (and are what users copy): the same
    rules, with the package's own names allowed (the scripts call into it), no torch-private exception."""
    root = SRC.parent.parent
    scripts = sorted(path for folder in ("benchmarks", "examples", "spaces") for path in (root / folder).rglob("*.py"))
    assert any(path.name == "bench_generation.py" for path in scripts)
    uses = scan(sorted(SRC.rglob("*.py")) + scripts)
    offences = [use for path in scripts for use in uses[path]]
    assert not offences, "private library names used in the scripts (use public API):\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from transformers.utils.chat_template_utils import _get_control_token_patterns\n", "import _get_control"),
        ("import torch\nw = torch._weight_norm(v, g, 0)\n", "torch._weight_norm"),
        ("import torch\nlimit = torch._dynamo.config.recompile_limit\n", "torch._dynamo"),
        ("import torch._dynamo\n", "import torch._dynamo"),
        ("from gradio._x import y\n", "from gradio._x import y"),
        ("import peft as p\np._hidden()\n", "p._hidden"),
        ("class A:\n    def f(self):\n        return self._torch_extract_fbank_features(1)\n", "_torch_extract_fbank"),
        ("x = getattr(obj, '_private_thing')\n", "'_private_thing'"),
    ],
)
def test_scanner_catches(source, expected, tmp_path, monkeypatch):
    fake_src = tmp_path / "transformers_baichuan_audio"
    fake_src.mkdir()
    path = fake_src / "mod.py"
    path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    uses = scan([path])[path]
    assert any(expected in u for u in uses), uses


def test_scanner_allows_own_private_names(tmp_path, monkeypatch):
    fake_src = tmp_path / "transformers_baichuan_audio"
    fake_src.mkdir()
    path = fake_src / "mod.py"
    path.write_text(
        "class A:\n    def _own(self):\n        self._x = 1\n        return self._own, self._x, self.__dict__\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    assert scan([path])[path] == []
