"""Counting the floating-point work of a forward, attention included (a helper of the benchmark scripts).

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and the CUDA attention kernels, but not
the CPU kernel that ``F.scaled_dot_product_attention`` runs on a CPU (torch 2.13): there every SDPA call counted 0.
:func:`flop_counter` adds, for each SDPA call that the counter left at 0, the product work of its shapes
(:func:`attention_flops`: ``q k^T`` and ``p v``, 2 FLOPs per multiply-add, as torch counts the CUDA kernels and as
the eager path's two matmuls count), so that a CPU count includes the attention whose work grows with the phrase
(``bench_code2wav_streaming.py``) and the roofline of ``bench_code2wav.py`` divides by the whole work.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of ``softmax(q k^T) v`` for q (..., L, E), k (..., S, E), v (..., S, Ev): ``2 L S (E + Ev)`` per row of
    the leading (batch, heads) dims of the query (grouped key / value heads do not change the work)."""
    *lead, length, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * length * keys * (dim + value_dim)


class AttentionAwareFlopCounter(TorchFunctionMode):
    """A ``FlopCounterMode`` (no display) plus the SDPA calls it does not count (module docstring).

    Use as a context manager; :meth:`get_total_flops` as the counter's."""

    def __init__(self):
        super().__init__()
        self.counter = FlopCounterMode(display=False)
        self.uncounted_attention_flops = 0

    def __enter__(self):
        self.counter.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            self.counter.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        if self.counter.get_total_flops() == before:
            names = ("query", "key", "value")
            query, key, value = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))
            self.uncounted_attention_flops += attention_flops(query.shape, key.shape, value.shape)
        return out

    def get_total_flops(self) -> int:
        return self.counter.get_total_flops() + self.uncounted_attention_flops


def flop_counter() -> AttentionAwareFlopCounter:
    """A FLOP counter that also counts attention on a CPU (module docstring)."""
    return AttentionAwareFlopCounter()
