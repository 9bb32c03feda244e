"""The two computations of every step of the speech loop, eager or ``torch.compile``-d.

Per step the loop runs ONE LLM forward (hidden states only; prefill, multi-token switch steps and single-token
decode steps) and, for the rows in an audio phase, ONE audio frame (8 incremental audio-head positions).
:class:`SpeechDecodeSteps` runs them:

* eagerly (default): ``model.model(...)`` and ``audio_head.decode_frame`` with a fresh per-frame ``DynamicCache``;
* compiled (``compile_config`` given, LLM cache static): single-token LLM steps call the ``torch.compile``-d
  language model (as transformers' ``get_compiled_call`` does for its ``generate``) with the 2-D attention mask
  padded to the static cache length, so that every decode step has the same shapes; the audio head runs a compiled
  :meth:`BaichuanAudioHead.forward_position` (one graph per codebook position) on a preallocated ``StaticCache`` of
  8 slots per batch size, reset every frame. Prefill and multi-token steps stay eager, on the same static cache.

Unlike transformers' text ``generate``, compilation is never switched on implicitly: pass ``compile_config`` (a
:class:`transformers.CompileConfig`) to ``generate(..., output_audio=True, cache_implementation="static")``, on any
device. ``CompileConfig()`` (``mode="reduce-overhead"``) is the CUDA-graph setting for GPUs; on CPUs use plain
inductor, ``CompileConfig(dynamic=False, mode=None)``: the CPU decode layout's row blocks compile to inductor's own
multi-threaded GEMV loops (:mod:`.decode_layout`). Inductor's ``freezing`` option (weights baked into the graphs;
recompile after changing them) also works with these caches. A language model on ``sdpa`` is switched to
:mod:`.decode_attention`'s grouped single-token attention (the same numbers; no copy of the static cache per
step). The compiled functions are kept on their modules (as ``get_compiled_call`` does), one per config, and
reused by later calls; the caches are still made per call (no generation state on the model). A compiled call runs
under ``torch.inference_mode()`` whatever the caller's mode (graphs are guarded on the per-thread grad mode), so
its returned cache is made of inference tensors: continue it with another compiled call. The steps are compiled
without dynamo's guards on the modules' Python structure and without inductor's input asserts
(:func:`compile_kwargs`): the guards on their weights and attribute values stay.

Measured (``benchmarks/bench_generation.py --size 0.5b``, fp32, 2-core CPU, one run each): see the README.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from transformers import CompileConfig
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import logging

from .compile_settings import compile_settings, drop_static_input_mark
from .decode_attention import use_grouped_decode_attention

logger = logging.get_logger(__name__)

#: dynamo's default per-function ``recompile_limit`` (torch 2.6 - 2.13): the least the compiled head step asks for.
DEFAULT_RECOMPILE_LIMIT = 8

#: Model inputs that only the first (prefill) step carries; such steps always run eagerly.
_PREFILL_KEYS = ("input_features", "encoder_length", "bridge_length")


#: Guards that dynamo puts on the modules and that :func:`module_guard_filter` keeps: the parameters' and buffers'
#: dtype / device / shape / strides, the ``_modules`` keys, and attribute values (``training``, head sizes, the
#: attention implementation of a config).
KEPT_MODULE_GUARDS = frozenset({"TENSOR_MATCH", "DICT_KEYS_MATCH", "CONSTANT_MATCH", "EQUALS_MATCH"})


def module_guard_filter(guard_entries) -> list[bool]:
    """dynamo ``guard_filter_fn`` of the compiled decode steps: every guard except those on the modules' Python
    structure (types, empty hook dicts, absent attributes, closures: 470 of the ~700 guards of a tiny head
    position; a 0.5B frame's 9 graphs have ~13 k guards, up to 9 k of these kinds). What a step's graph assumes of
    the weights and settings stays guarded (:data:`KEPT_MODULE_GUARDS`), and a module replaced by one whose
    parameters sit elsewhere (e.g. PEFT's LoRA layers: ``base_layer.weight``) fails a tensor guard. Not seen after
    a step was compiled: a replacement module with the same parameters and another ``forward``, a new forward hook.
    """
    return [
        entry.guard_type in KEPT_MODULE_GUARDS
        or entry.orig_guard.source is None
        or not entry.orig_guard.source.is_unspecialized_nn_module()
        for entry in guard_entries
    ]


def compile_kwargs(compile_config: CompileConfig, recompile_limit: int | None = None) -> dict:
    """``torch.compile`` arguments of ``compile_config`` (and of ``recompile_limit``: how many graphs the function
    may keep before it falls back to eager, or with ``fullgraph`` fails; None: dynamo's global limit), with per-call
    checks that the guards make redundant left out unless its ``options`` say otherwise: :func:`module_guard_filter`
    as ``guard_filter_fn`` and, for inductor, the size / stride asserts of its wrapper on every graph input
    (``size_asserts``: ~480 per 0.5B frame; the inputs' sizes and strides are guarded). With a ``mode`` (e.g.
    ``"reduce-overhead"``, CUDA graphs) torch.compile takes no options: the config's options go through as they
    are."""
    kwargs = compile_config.to_dict()
    if recompile_limit is not None:
        kwargs["recompile_limit"] = recompile_limit
    if kwargs.get("mode") is not None:  # torch.compile takes a mode or options, not both
        return kwargs
    options = dict(kwargs.get("options") or {})
    options.setdefault("guard_filter_fn", module_guard_filter)
    if kwargs.get("backend", "inductor") == "inductor":
        options.setdefault("size_asserts", False)
    kwargs["options"] = options
    return kwargs


def compiled_function(
    module: torch.nn.Module, name: str, compile_config: CompileConfig, recompile_limit: int | None = None
) -> Callable:
    """``torch.compile(getattr(module, name), **compile_kwargs(compile_config, recompile_limit))``, built once per
    config and limit and kept on ``module``."""
    key = f"_compiled_{name.strip('_')}"
    kept = module.__dict__.get(key)
    if kept is None or kept[0] != (compile_config, recompile_limit):
        compiled = torch.compile(getattr(module, name), **compile_kwargs(compile_config, recompile_limit))
        kept = ((compile_config, recompile_limit), compiled)
        module.__dict__[key] = kept
    return kept[1]


def resolve_compile_config(
    cache: Cache, compile_config: CompileConfig | None, disable_compile: bool | None
) -> CompileConfig | None:
    """The compile config to use for this call, or None (eager): only with a ``compile_config``, without
    ``disable_compile``, and a compileable (static) LLM cache; warns when a config is given but cannot be used."""
    if compile_config is None or disable_compile:
        return None
    if not isinstance(compile_config, CompileConfig):
        raise TypeError(f"compile_config must be a transformers.CompileConfig, got {type(compile_config).__name__}")
    if not getattr(cache, "is_compileable", False) or type(cache) is DynamicCache:
        logger.warning_once(
            "compile_config is ignored: compiled speech decoding needs a static LLM cache "
            "(generate(..., cache_implementation='static'))"
        )
        return None
    return compile_config


class SpeechDecodeSteps:
    """Runs the LLM step and the audio frame of one speech-generation call (see the module docstring).

    Args:
        model: the ``BaichuanAudioForConditionalGeneration``.
        cache: the call's LLM cache.
        compile_config: from :func:`resolve_compile_config`; None runs everything eagerly.
    """

    def __init__(self, model, cache: Cache, compile_config: CompileConfig | None = None, batch_size: int = 1):
        self.model = model
        self.cache = cache
        self.compile_config = compile_config
        self._head_caches: dict[int, Cache] = {}
        if compile_config is not None:
            self._freezing = bool((compile_config.options or {}).get("freezing", False))
            lm = model.model.language_model
            if not cache.is_initialized:
                text_config = model.config.get_text_config()
                head_dim = getattr(text_config, "head_dim", None) or (
                    text_config.hidden_size // text_config.num_attention_heads
                )
                cache.early_initialization(batch_size, text_config.num_key_value_heads, head_dim, lm.dtype, lm.device)
            self._prepare_cache(cache)
            # sdpa would copy the whole static cache per layer and step under compile (repeat_kv); see the module.
            use_grouped_decode_attention(lm)
            self._compiled_llm = compiled_function(lm, "__call__", compile_config)
            # One graph per codebook position and batch size: room for 4 batch sizes (torch.compile's own limit).
            head_limit = max(DEFAULT_RECOMPILE_LIMIT, 4 * model.audio_head.num_codebooks)
            self._compiled_head_step = compiled_function(
                model.audio_head, "forward_position", compile_config, head_limit
            )
            self._static_len = int(cache.get_max_length())

    def _prepare_cache(self, cache: Cache) -> Cache:
        """With inductor's ``freezing``, drop the static-address marks of the cache tensors: frozen graphs bake
        marked tensors in as constants, so a later call's new cache would be ignored (they stay graph inputs)."""
        if self._freezing:
            for layer in cache.layers:
                for name in ("keys", "values", "cumulative_length"):
                    tensor = getattr(layer, name, None)
                    if isinstance(tensor, torch.Tensor):
                        drop_static_input_mark(tensor)
        return cache

    @property
    def compiled(self) -> bool:
        return self.compile_config is not None

    def settings(self) -> contextlib.AbstractContextManager:
        """Enter once around the whole loop (not per step): while compiled functions run (and compile), for
        inductor, the config's ``options`` (dynamo already reads some of them, e.g. ``freezing``, while tracing;
        ``torch.compile(options=...)`` only applies them inside the backend). Eager or no options: a no-op."""
        if not self.compiled or self.compile_config.backend != "inductor":
            return contextlib.nullcontext()
        options = self.compile_config.options or {}
        return compile_settings({k: v for k, v in options.items() if k != "guard_filter_fn"})

    def llm(self, model_inputs: dict) -> torch.Tensor:
        """One LLM forward of ``model_inputs`` (``input_ids`` (B, q), the full ``attention_mask``, ``position_ids``,
        ``cache``, optional ``audio_codes`` / speech features); returns the last position's hidden state (B, H)."""
        input_ids = model_inputs["input_ids"]
        if not self.compiled or input_ids.shape[1] != 1 or any(k in model_inputs for k in _PREFILL_KEYS):
            return self.model.model(use_cache=True, **model_inputs).last_hidden_state[:, -1]
        mask = model_inputs["attention_mask"]
        static_mask = mask.new_zeros(mask.shape[0], self._static_len)
        static_mask[:, : mask.shape[1]] = mask
        inputs_embeds = self.model.model.embed_inputs(input_ids, model_inputs.get("audio_codes"))
        outputs = self._compiled_llm(
            inputs_embeds=inputs_embeds,
            attention_mask=static_mask,
            # A fresh dense tensor: a slice of the cumsum has a stride that changes every step (a recompile).
            position_ids=model_inputs["position_ids"].clone(memory_format=torch.contiguous_format),
            cache=model_inputs["cache"],
            use_cache=True,
        )
        return outputs.last_hidden_state[:, -1]

    def audio_frame(
        self, hidden: torch.Tensor, select: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.LongTensor, list[torch.Tensor]]:
        """Codes (N, num_codebooks) and raw logits of one frame for the (N, H) hidden states (see
        :meth:`BaichuanAudioHead.decode_frame`)."""
        head, audio_embed = self.model.audio_head, self.model.model.audio_embed
        if not self.compiled:
            return head.decode_frame(hidden, audio_embed, select)
        rows = hidden.shape[0]
        if rows not in self._head_caches:
            self._head_caches[rows] = self._prepare_cache(head.new_cache(static=True, batch_size=rows))
        return head.decode_frame(
            hidden, audio_embed, select, cache=self._head_caches[rows], step=self._compiled_head_step
        )


__all__ = ["SpeechDecodeSteps", "compile_kwargs", "compiled_function", "module_guard_filter", "resolve_compile_config"]
