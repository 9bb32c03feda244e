"""Batch-1 decode products on CPUs: each weight read as row blocks, one block per thread.

One decode step (a text token, or an audio frame: one LLM step plus the audio head's 8 positions) multiplies a
single row by every weight matrix, so its speed is how fast the weights stream from memory. ``F.linear`` asks the
BLAS for ``x @ W.T``, and MKL runs that batch-1 product (a GEMV) on ONE thread: on a 2-core CPU half of the memory
bandwidth is unused. The same product written as a batched one, ``torch.bmm(W.view(T, N / T, K), x)`` over ``T`` row
blocks of the (unchanged, row-major) weight, runs the blocks on ``T`` threads. Measured on the 2-core CPU of this
project (fp32, 2 threads, batch 1, ~0.4 GiB of matrices of each shape so that they stream from DRAM, best of 7; a
noisy machine, so +-20 %)::

    shape (out x in)              F.linear   column-major F.linear   2 row blocks (bmm)
    4864 x 896 (LLM gate / up)    13 GB/s    21 GB/s                 44 GB/s
    896 x 896 (LLM q / o)         13 GB/s    15 GB/s                 46 GB/s
    896 x 4864 (LLM down)         19 GB/s    16 GB/s                 25 GB/s
    1792 x 896 (audio head FFN)   12 GB/s    -                       28 GB/s
    128 x 896 (LLM k / v)         10 GB/s    -                       21 GB/s
    37984 x 896 (LM head quarter) 12 GB/s    25 GB/s                 31 GB/s

(the column-major layout was this module's first approach, issue 24.) With 2 to 4 input rows (batched generation)
the blocks still win (4864 x 896: 22 vs 5.5 GB/s for 2 rows, 13.5 vs 7 for 4); from 8 rows on MKL's own GEMM is as
fast, so more rows, training (gradients), other dtypes (bf16 is slower as bmm on CPUs), other devices and
non-contiguous weights keep ``F.linear``. Results equal ``F.linear``'s up to the BLAS's summation order (float
rounding, ~1e-6 relative; greedy tokens and codes were the same in every test).

:func:`apply_decode_layout` gives every plain ``nn.Linear`` the language model, the audio head and the LM head have
(not subclasses, whose own ``forward`` stays; not the audio tokenizer or code2wav, which run GEMM-shaped work) a
forward that chooses per call; :func:`remove_decode_layout` takes it away again. Nothing else changes: weights keep
their storage, values and Parameter identities (a tied LM head stays tied; optimizers, PEFT wrappers and
``save_pretrained`` see the usual tensors). The number of blocks is ``torch.get_num_threads()`` at call time (a
remainder of ``out_features % blocks`` rows goes through ``F.linear``).

Inside ``torch.compile`` (the compiled decode steps, :mod:`.decode_steps`) the same rule picks the same row blocks,
written for inductor (:func:`compiled_blocked_linear`), which turns a batch-1 ``bmm`` into its own fused,
multi-threaded C++ reduction loops. Two details make those loops stream the weights: the bias is added after the
products (``baddbmm`` with a bias stays an external call, ~3.5 GB/s in the graph), and the input of a narrowing
projection (``in_features > out_features``: an MLP's down projection) first goes through :func:`materialize`, an
opaque copy, because inductor otherwise inlines the producer (the audio head's erf GELU) into the reduction loop and
recomputes it once per output row. Not when that input is as wide as the residual stream (:func:`copies_input`:
GQA's k / v projections, whose input is the normed hidden state): inductor computes the norm inline for the q
projection anyway, and without the copies q, k and v become one loop, so a compiled 0.5B LLM layer makes 4 calls
(2 kernels, the attention, the down projection's copy) instead of 8; a 24-layer step, alternating in one process,
took 49.7 against 51.2 ms (median; 53.7 / 53.8 in a second run), and whole compiled audio frames 11.25 / 10.76 /
12.17 and 11.77 / 9.98 / 12.19 against 10.75 / 10.09 / 10.95 and 11.33 / 11.55 / 11.85 frames/s (two alternating
pairs of processes, ``bench_generation.py --size 0.5b --threads 2 --compile --no-first-audio --audio-repeats 3``; a
slow phase of this VM, within its noise). A third: inductor sums a float32 reduction of more than :data:`CASCADE_TERMS`
(4096) terms in a cascade of chunks, for accuracy, and that loop streams its weight slowly; a single row with more
inputs (the LLM's down projection: 4864 in the 0.5B, 18944 in the 7B) is written as equal chunk sums of at most 4096
terms instead (:func:`chunked_linear`), which inductor compiles to one plain loop. 0.4 GiB of 896 x 4864 weights in
one graph: 24-27 GB/s with the cascade, 42-44 GB/s in two 2432-term chunks (``sum`` 36-38 GB/s in the same run); a
compiled 24-layer 0.5B-shaped step, alternating in one process: 49.3 -> 46.9 ms (the whole audio frame's gain, ~3 %,
is below this VM's run-to-run noise). Measured on a 2-core AMD EPYC (Zen 3, AVX2) VM, fp32, 2 threads, plain inductor
(``CompileConfig(dynamic=False, mode=None)``), one run each: isolated decode GEMVs 31-34 GB/s against 25-29 for the
eager blocks and 17-20 for ``F.linear`` (35 GB/s summing bandwidth); the real-size audio head 2.9-3.9 ms per
codebook position compiled against 4.3-4.6 eager (5.5 ms compiled without the copy). The number of blocks is the
thread count when the graph is traced (a guarded constant: another thread count traces another graph).

``generate`` applies it by default when the model decodes on a CPU in eval mode (``decode_layout=None``: auto);
``decode_layout=False`` leaves the model as it is; GPUs are left alone (their GEMV kernels use the whole chip).
"""

from __future__ import annotations

import threading
import types

import torch
import torch.nn.functional as F
from torch import nn

#: Input rows up to which the row blocks beat MKL's GEMM (measured; see the module docstring).
MAX_BLOCK_ROWS = 4

#: One change at a time: two ``generate`` calls starting together in two threads must not both install the forward.
_LAYOUT_LOCK = threading.Lock()


def blocked_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """``F.linear(input, weight, bias)`` computed as ``blocks`` row blocks of ``weight`` in one ``torch.bmm`` (one
    block per thread); the ``out_features % blocks`` last rows, if any, through ``F.linear``. ``weight`` must be
    contiguous; ``input`` (..., in_features)."""
    out_features, in_features = weight.shape
    rows = input.numel() // in_features
    per_block = out_features // blocks
    main = per_block * blocks
    x = input.reshape(rows, in_features).t().expand(blocks, in_features, rows)
    w = weight[:main].view(blocks, per_block, in_features)
    if bias is None:
        out = torch.bmm(w, x)
    else:
        out = torch.baddbmm(bias[:main].view(blocks, per_block, 1), w, x)
    out = out.permute(2, 0, 1).reshape(rows, main)
    if main < out_features:
        rest = F.linear(input.reshape(rows, in_features), weight[main:], None if bias is None else bias[main:])
        out = torch.cat([out, rest], dim=-1)
    return out.reshape(*input.shape[:-1], out_features)


@torch.library.custom_op("baichuan_audio::materialize", mutates_args=())
def materialize(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that ``torch.compile`` cannot fuse into its consumer (an opaque op: the producer's result is
    written to memory once). Used on the input of the narrowing projections under compile; see the module docstring."""
    return x.clone()


@materialize.register_fake
def _materialize_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.compiler.assume_constant_result
def _block_count() -> int:
    """The thread count, as a constant of a compiled graph (dynamo guards it: other threads, another graph)."""
    return torch.get_num_threads()


#: Inductor sums a float32 reduction of more than this many terms in a cascade of chunks (for accuracy); a GEMV loop
#: written that way streams its weight ~1.6x slower (see the module docstring).
CASCADE_TERMS = 4096

#: The shortest chunk :func:`sum_chunks` accepts (shorter inner loops would cost more than the cascade).
MIN_CHUNK_TERMS = 256


def sum_chunks(in_features: int) -> int:
    """The fewest equal chunks of ``in_features`` terms of at most :data:`CASCADE_TERMS` each (1: no split, also when
    only chunks shorter than :data:`MIN_CHUNK_TERMS` would divide it)."""
    if in_features <= CASCADE_TERMS:
        return 1
    for chunks in range(2, in_features // MIN_CHUNK_TERMS + 1):
        if in_features % chunks == 0 and in_features // chunks <= CASCADE_TERMS:
            return chunks
    return 1


def chunked_linear(input: torch.Tensor, weight: torch.Tensor, chunks: int) -> torch.Tensor:
    """``F.linear(input, weight)`` as ``chunks`` partial sums per output (each over ``in_features / chunks`` terms)
    added up: an elementwise product and two sums, which inductor compiles to one multi-threaded loop without its
    cascade summation. ``in_features`` must be a multiple of ``chunks``."""
    out_features, in_features = weight.shape
    w = weight.view(out_features, chunks, in_features // chunks)
    x = input.reshape(-1, 1, chunks, in_features // chunks)
    return (w * x).sum(-1).sum(-1).reshape(*input.shape[:-1], out_features)


def compiled_blocked_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    blocks: int,
    copy_input: bool | None = None,
) -> torch.Tensor:
    """:func:`blocked_linear` written for inductor (see the module docstring): the bias added after the products,
    the input materialized first if ``copy_input`` (None: for a narrowing projection, ``in_features >
    out_features``), and a single row with more than :data:`CASCADE_TERMS` inputs summed in chunks
    (:func:`chunked_linear`)."""
    out_features, in_features = weight.shape
    if in_features > out_features if copy_input is None else copy_input:
        input = torch.ops.baichuan_audio.materialize(input)
    chunks = sum_chunks(in_features)
    if chunks > 1 and input.numel() == in_features:
        out = chunked_linear(input, weight, chunks)
    else:
        out = blocked_linear(input, weight, None, blocks)
    return out if bias is None else out + bias


def _decode_forward(self: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    """The forward :func:`apply_decode_layout` installs: row blocks for a few fp32 rows on a CPU without gradients
    (:func:`compiled_blocked_linear` inside ``torch.compile``), else ``F.linear``."""
    weight, compiling = self.weight, torch.compiler.is_compiling()
    blocks = _block_count() if compiling else torch.get_num_threads()
    if (
        blocks < 2
        or self.out_features < blocks
        or input.numel() == 0
        or input.numel() > MAX_BLOCK_ROWS * self.in_features
        or weight.dtype != torch.float32
        or input.dtype != torch.float32
        or weight.device.type != "cpu"
        or not weight.is_contiguous()
        or (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
    ):
        return F.linear(input, weight, self.bias)
    if compiling:
        return compiled_blocked_linear(input, weight, self.bias, blocks, getattr(self, "decode_copies_input", None))
    return blocked_linear(input, weight, self.bias, blocks)


def _decode_linears(model: nn.Module) -> list[tuple[nn.Linear, int | None]]:
    """The plain ``nn.Linear`` layers a decode step reads (the language model, the audio head and the LM head),
    each with the hidden size (residual stream width) of its part's config, if it has one."""
    parts = [getattr(model, "lm_head", None), getattr(model, "audio_head", None)]
    inner = getattr(model, "model", None)
    parts.append(getattr(inner, "language_model", None))
    found = {}
    for part in parts:
        if part is None:
            continue
        hidden = getattr(getattr(part, "config", None), "hidden_size", None)
        for m in part.modules():
            if type(m) is nn.Linear:
                found.setdefault(id(m), (m, hidden))
    return list(found.values())


def copies_input(linear: nn.Linear, hidden_size: int | None) -> bool:
    """Whether the compiled decode forward of ``linear`` materializes its input: a narrowing projection, unless
    its input is as wide as the residual stream (``hidden_size``; e.g. GQA's k / v projections, whose input is
    the normed hidden state that inductor computes inline for the q projection anyway)."""
    return linear.in_features > linear.out_features and linear.in_features != hidden_size


def has_decode_layout(linear: nn.Module) -> bool:
    """Whether :func:`apply_decode_layout` gave ``linear`` its decode forward."""
    forward = linear.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _decode_forward


def apply_decode_layout(model: nn.Module) -> int:
    """Give the decode ``nn.Linear`` layers of ``model`` the row-block forward (see the module docstring).

    Idempotent. Returns the number of layers changed by this call. Do not call it while another thread computes
    with the model (``generate`` calls it before its first forward, under a lock shared by all calls).
    """
    changed = 0
    with _LAYOUT_LOCK, torch.no_grad():
        for linear, hidden in _decode_linears(model):
            if has_decode_layout(linear):
                continue
            linear.forward = types.MethodType(_decode_forward, linear)
            linear.decode_copies_input = copies_input(linear, hidden)
            changed += 1
    return changed


def remove_decode_layout(model: nn.Module) -> int:
    """Undo :func:`apply_decode_layout`: the plain ``nn.Linear.forward`` again. Returns the number of layers changed."""
    changed = 0
    with _LAYOUT_LOCK:
        for linear, _ in _decode_linears(model):
            if has_decode_layout(linear):
                del linear.forward
                linear.__dict__.pop("decode_copies_input", None)
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


__all__ = [
    "MAX_BLOCK_ROWS",
    "apply_decode_layout",
    "CASCADE_TERMS",
    "blocked_linear",
    "chunked_linear",
    "compiled_blocked_linear",
    "copies_input",
    "has_decode_layout",
    "materialize",
    "remove_decode_layout",
    "sum_chunks",
    "wants_decode_layout",
]
