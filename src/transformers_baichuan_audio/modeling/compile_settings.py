"""The one place that touches torch's private compiler settings (``torch._dynamo`` / ``torch._inductor`` config).

torch has no public API for them: ``torch.compile(options=...)`` only applies inductor options inside the backend
(dynamo already reads some, e.g. ``freezing``, while tracing), and dynamo's per-function recompile limit has no
public setter. Compiled speech decoding (:mod:`.decode_steps`) needs both, so they are read and patched here only,
each with a fallback: when a torch release moves or renames them, compiled decoding still runs (it may recompile
less or warn), and eager decoding never imports them. ``tests/test_private_api.py`` allows torch-private names in
this module and nowhere else in ``src/``.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: dynamo's default ``recompile_limit`` (torch 2.6 - 2.13), used when it cannot be read.
DEFAULT_RECOMPILE_LIMIT = 8

#: Attribute torch puts on tensors marked as static graph inputs (``torch._dynamo.mark_static_address``).
_STATIC_INPUT_MARK = "_dynamo_static_input_type"


def _config_module(name: str) -> Any | None:
    """``torch._dynamo.config`` / ``torch._inductor.config``, or None when this torch has no such module."""
    try:
        return importlib.import_module(f"torch.{name}.config")
    except ImportError:
        return None


def recompile_limit() -> int:
    """dynamo's current per-function recompile limit (:data:`DEFAULT_RECOMPILE_LIMIT` if it cannot be read)."""
    config = _config_module("_dynamo")
    value = getattr(config, "recompile_limit", None) if config is not None else None
    return int(value) if isinstance(value, int) else DEFAULT_RECOMPILE_LIMIT


def _patch(config: Any | None, values: dict[str, Any], what: str) -> contextlib.AbstractContextManager:
    if config is None or not hasattr(config, "patch"):
        logger.warning_once(f"this torch has no {what} config to patch; compiling with its defaults")
        return contextlib.nullcontext()
    known = {k: v for k, v in values.items() if hasattr(config, k)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        logger.warning_once(f"{what} options not known to this torch are ignored: {unknown}")
    return config.patch(known) if known else contextlib.nullcontext()


def compile_settings(
    recompile_limit: int | None = None, inductor_options: dict[str, Any] | None = None
) -> contextlib.AbstractContextManager:
    """Context manager: dynamo's ``recompile_limit`` and inductor's ``inductor_options`` while it is entered (both
    optional). Settings this torch does not know are skipped with a warning."""
    stack = contextlib.ExitStack()
    if recompile_limit is not None:
        stack.enter_context(_patch(_config_module("_dynamo"), {"recompile_limit": recompile_limit}, "dynamo"))
    if inductor_options:
        stack.enter_context(_patch(_config_module("_inductor"), dict(inductor_options), "inductor"))
    return stack


def drop_static_input_mark(tensor: torch.Tensor) -> None:
    """Remove the static-graph-input mark torch may have put on ``tensor`` (a no-op when it has none)."""
    if hasattr(tensor, _STATIC_INPUT_MARK):
        delattr(tensor, _STATIC_INPUT_MARK)


__all__ = ["DEFAULT_RECOMPILE_LIMIT", "compile_settings", "drop_static_input_mark", "recompile_limit"]
