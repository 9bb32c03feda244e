"""Weight layout for batch-1 decoding on CPUs: the wide matrices stored column-major.

One decode step (a text token, or an audio frame: one LLM step plus the audio head's 8 positions) multiplies a
single row by every weight matrix, so its speed is how fast the weights stream from memory. ``nn.Linear`` stores
``weight`` as (out_features, in_features), row-major; ``F.linear`` then asks the BLAS for ``x @ W.T``, and MKL runs
that batch-1 product on one thread. Measured on the 2-core CPU of this project (batch-1 ``F.linear``, fp32, 2
threads, 0.5 GiB of matrices of each shape so that they stream from DRAM; ``benchmarks/bench_generation.py
--layout-compare`` measures whole decode steps), the SAME values stored column-major (strides ``(1,
out_features)``, so that ``W.T`` is contiguous and MKL reads it as a plain (in, out) matrix) stream faster when
the matrix is at least as tall as it is wide:

=============================  =========  ============
shape (out x in)               row-major  column-major
=============================  =========  ============
4864 x 896 (LLM gate / up)     11 GB/s    17 GB/s
1792 x 896 (audio head FFN)    12 GB/s    15-17 GB/s
896 x 896 (q / o)              11 GB/s    13 GB/s
896 x 4864 (LLM down)          13-17 GB/s 12-14 GB/s
128 x 896 (k / v)              11 GB/s    6 GB/s
=============================  =========  ============

so :func:`apply_decode_layout` re-strides, in place, the weights with ``out_features >= in_features`` and leaves the
others alone. Nothing else changes: the parameters keep their shapes, values, dtypes and identities (optimizers and
PEFT wrappers holding them are unaffected), gradients flow as before, and ``save_pretrained`` writes the usual
contiguous tensors. Results are the same up to the summation order of the BLAS (float rounding; greedy tokens and
codes were the same in every test). Re-striding copies one matrix at a time (transiently one more copy of the
largest, e.g. the LM head).

One caveat: distributed training wrappers (DDP, FSDP) lay out their gradient buckets from the parameters' strides
when they are built; generating with the auto layout in the middle of such a run may make them warn and copy. Pass
``decode_layout=False`` there (the auto mode already skips a model in train mode).

``generate`` applies it by default when the model decodes on a CPU (``decode_layout=None``: auto); pass
``decode_layout=False`` to keep the row-major layout, or call :func:`apply_decode_layout` / :func:`row_major_layout`
yourself. GPUs are left alone (their GEMV kernels read either layout at full speed).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

#: One re-striding at a time: two ``generate`` calls starting together in two threads must not both swap a weight
#: while the other already computes with it.
_LAYOUT_LOCK = threading.Lock()


def _decode_linears(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers a decode step reads: the language model, the audio head and the LM head (the audio
    tokenizer and code2wav run batched, GEMM-shaped work, and are left alone)."""
    parts = [getattr(model, "lm_head", None), getattr(model, "audio_head", None)]
    inner = getattr(model, "model", None)
    parts.append(getattr(inner, "language_model", None))
    return [m for part in parts if part is not None for m in part.modules() if isinstance(m, nn.Linear)]


def _eligible(linear: nn.Linear, tied: torch.Tensor | None) -> bool:
    weight = linear.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype.is_floating_point
        and linear.out_features >= linear.in_features
        and weight is not tied  # an LM head tied to the input embeddings: the embedding lookup wants rows
    )


def apply_decode_layout(model: nn.Module) -> int:
    """Store the eligible decode weights of ``model`` column-major (see the module docstring), in place.

    Idempotent (weights already column-major are skipped). Returns the number of weights re-strided by this call.
    Do not call it while another thread computes with the model (``generate`` calls it before its first forward,
    under a lock shared by all calls).
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = getattr(embeddings, "weight", None)
    changed = 0
    with _LAYOUT_LOCK, torch.no_grad():
        for linear in _decode_linears(model):
            weight = linear.weight
            if not _eligible(linear, tied) or weight.t().is_contiguous():
                continue
            weight.data = weight.data.t().contiguous().t()
            changed += 1
    return changed


def row_major_layout(model: nn.Module) -> int:
    """Undo :func:`apply_decode_layout`: every decode weight stored contiguous (row-major) again. Returns the number
    of weights re-strided."""
    changed = 0
    with _LAYOUT_LOCK, torch.no_grad():
        for linear in _decode_linears(model):
            weight = linear.weight
            if weight.device.type != "meta" and not weight.is_contiguous():
                weight.data = weight.data.contiguous()
                changed += 1
    return changed


def wants_decode_layout(model: nn.Module, decode_layout: bool | None) -> bool:
    """Whether ``generate`` should apply the layout: ``decode_layout`` if given, else (auto) when the LM head
    computes on a CPU and the model is in eval mode."""
    if decode_layout is not None:
        if not isinstance(decode_layout, bool):
            raise TypeError(f"decode_layout must be True, False or None, got {decode_layout!r}")
        return decode_layout
    lm_head = getattr(model, "lm_head", None)
    weight = getattr(lm_head, "weight", None)
    return weight is not None and weight.device.type == "cpu" and not model.training


__all__ = ["apply_decode_layout", "row_major_layout", "wants_decode_layout"]
