"""The one place that touches torch's private compiler settings (``torch._inductor`` config, dynamo's static-input
mark).

torch has no public API for them: ``torch.compile(options=...)`` only applies inductor options inside the backend
(dynamo already reads some, e.g. ``freezing``, while tracing). Compiled speech decoding (:mod:`.decode_steps`)
needs them, so they are patched here only, with a fallback: when a torch release moves or renames them, compiled
decoding still runs (it may warn), and eager decoding never imports them. (dynamo's per-function recompile limit
is public since torch 2.13: ``torch.compile(recompile_limit=...)``.) ``tests/test_private_api.py`` allows
torch-private names in this module and nowhere else in ``src/``.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: Attribute torch puts on tensors marked as static graph inputs (``torch._dynamo.mark_static_address``).
_STATIC_INPUT_MARK = "_dynamo_static_input_type"


def _config_module(name: str) -> Any | None:
    """``torch._dynamo.config`` / ``torch._inductor.config``, or None when this torch has no such module."""
    try:
        return importlib.import_module(f"torch.{name}.config")
    except ImportError:
        return None


def _patch(config: Any | None, values: dict[str, Any], what: str) -> contextlib.AbstractContextManager:
    if config is None or not hasattr(config, "patch"):
        logger.warning_once(f"this torch has no {what} config to patch; compiling with its defaults")
        return contextlib.nullcontext()
    known = {k: v for k, v in values.items() if hasattr(config, k)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        logger.warning_once(f"{what} options not known to this torch are ignored: {unknown}")
    return config.patch(known) if known else contextlib.nullcontext()


def compile_settings(inductor_options: dict[str, Any] | None = None) -> contextlib.AbstractContextManager:
    """Context manager: inductor's ``inductor_options`` while it is entered (none: a no-op). Options this torch
    does not know are skipped with a warning."""
    if not inductor_options:
        return contextlib.nullcontext()
    return _patch(_config_module("_inductor"), dict(inductor_options), "inductor")


def drop_static_input_mark(tensor: torch.Tensor) -> None:
    """Remove the static-graph-input mark torch may have put on ``tensor`` (a no-op when it has none)."""
    if hasattr(tensor, _STATIC_INPUT_MARK):
        delattr(tensor, _STATIC_INPUT_MARK)


__all__ = ["compile_settings", "drop_static_input_mark"]
