"""Where the parts of a model compute when accelerate dispatched it (``from_pretrained(..., device_map=...)``).

With a ``device_map`` whose entries include ``"cpu"`` (on a machine with accelerators) or ``"disk"``, accelerate
OFFLOADS those entries: their parameters stay on the ``meta`` device and each leaf module's weights are loaded onto
the model's main device (the first device of the map that is neither ``"cpu"`` nor ``"disk"``, else the cpu) for the
duration of its ``forward``, then dropped again. Two things follow for the model code:

* a module's device cannot be read from its weights (they are on ``meta``): :func:`module_device` returns where
  the module really computes;
* a weight read OUTSIDE its own module's ``forward`` (a code table indexed directly, a norm's affine applied by
  hand) must be loaded for that read: :func:`loaded_weights`.

Both are no-ops for a model that is not offloaded (everything on real devices), and neither needs accelerate
unless the model was dispatched by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_META = torch.device("meta")


def main_device(model: nn.Module) -> torch.device | None:
    """The main execution device of a model dispatched by accelerate (``model.hf_device_map``), or None.

    As accelerate's ``dispatch_model`` defines it: the first device of the map that is neither ``"cpu"`` nor
    ``"disk"``; the cpu when the map holds only those two. Offloaded entries compute there.
    """
    device_map = getattr(model, "hf_device_map", None)
    if not isinstance(device_map, dict) or not device_map:
        return None
    devices = [d for d in device_map.values() if d not in ("cpu", "disk")]
    if not devices:
        return torch.device("cpu")
    return torch.device(devices[0])  # an int is an index of the current accelerator (cuda:0, ...)


def _real_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from (p for p in module.parameters() if p.device != _META)
    yield from (b for b in module.buffers() if b.device != _META)


def module_device(module: nn.Module, model: nn.Module | None = None) -> torch.device:
    """The device ``module`` computes on.

    The device of its first parameter (or buffer) that is not on ``meta``. When all of them are on ``meta`` (an
    entry offloaded by accelerate; its buffers are moved to the execution device unless ``offload_buffers=True``),
    the main device of ``model`` (the dispatched model that contains ``module``, see :func:`main_device`), else the
    cpu. Never returns ``meta`` unless nothing is known at all (a model built on the meta device).
    """
    tensor = next(_real_tensors(module), None)
    if tensor is not None:
        return tensor.device
    for owner in (model, module):
        device = main_device(owner) if owner is not None else None
        if device is not None:
            return device
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def to_module_device(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``tensor`` on the device of ``module``'s weights before calling it; unchanged when they are offloaded (on
    ``meta``: accelerate's hook moves the inputs of that module's ``forward`` to its execution device)."""
    weight = next(module.parameters(), None)
    if weight is None or weight.device == _META:
        return tensor
    return tensor.to(weight.device)


@contextlib.contextmanager
def loaded_weights(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s own weights are real tensors on its execution device, also when accelerate
    offloaded them (``accelerate.utils.align_module_device``); a no-op otherwise. For weights that are read outside
    the module's ``forward``: read them inside the block (a tensor taken there stays valid after it)."""
    offloaded = any(p.device == _META for p in module.parameters(recurse=False))
    if not offloaded:
        yield module
        return
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:  # meta weights without accelerate: nothing can load them
        yield module
        return
    if not has_offloaded_params(module):
        yield module
        return
    with align_module_device(module):
        yield module


__all__ = ["main_device", "module_device", "to_module_device", "loaded_weights"]
