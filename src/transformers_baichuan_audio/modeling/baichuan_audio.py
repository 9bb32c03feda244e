"""Baichuan-Audio: the Qwen2 LLM with discrete audio input (8 summed code embeddings) and two output heads.

Module tree (keys relative to :class:`BaichuanAudioForConditionalGeneration`)::

    model                          BaichuanAudioModel
      language_model               Qwen2Model (composed with AutoModel.from_config(text_config))
      audio_embed.embeddings.{i}   nn.Embedding(codebook_sizes[i] + 1, hidden); a frame's embedding is their sum
      audio_tokenizer              BaichuanAudioTokenizerModel (speech features -> codes; frozen, run under no_grad)
    lm_head                        text LM head (untied)
    audio_head                     BaichuanAudioHead (depth transformer over the 8 codebooks)
    code2wav                       BaichuanAudioCode2Wav (codes -> 24 kHz waveform; fp32; only if enable_audio_output)

Audio enters the LLM only as codes: at every ``<audio_pad>`` position (``config.audio_pad_token_id``) the text
embedding is replaced by the sum of the 8 code embeddings of the next frame (frames are consumed in the order of the
``<audio_pad>`` positions, row-major over the batch). Input speech arrives as pre-computed ``audio_codes`` or as
``input_features`` + ``encoder_length`` (+ ``bridge_length``) that the audio tokenizer encodes.

Audio labels (training the audio head, teacher-forced). ``audio_labels`` has shape (B, T, num_codebooks); at position
``t`` it holds the codes of the frame predicted FROM position ``t``, and -100 where nothing is predicted:

* at ``<audiogen_start>``: the codes of frame 0 of the segment;
* at the ``<audio_pad>`` holding frame k: the codes of frame k+1;
* at the ``<audio_pad>`` holding the last frame: the end-of-audio frame, ``codebook_sizes[i]`` in every codebook i;
* -100 everywhere else (text positions, or codebooks that should not be trained at that position).

The head runs at every position with at least one label != -100, with inputs ``(last_hidden_state[t],
audio_labels[t])`` (teacher forcing: position k of the head sees the label codes 0..k-1 of the same frame; -100 codes
are fed as code 0). The audio loss is ``sum_i audio_loss_weights[i] * CE_i`` where ``CE_i`` is the mean cross-entropy
of codebook i over its non-ignored labels; the total loss is ``text_loss_weight * text CE + audio loss``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from ..configuration import BaichuanAudioConfig
from .audio_head import BaichuanAudioHead
from .audio_tokenizer import BaichuanAudioTokenizerModel
from .code2wav import BaichuanAudioCode2Wav
from .generation import BaichuanAudioGenerationMixin

_AUDIO_GENERATION_INPUTS = ("audio_codes", "input_features", "encoder_length", "bridge_length")


def fill_audio_codes(audio_codes: torch.Tensor, encoded_codes: torch.Tensor) -> torch.Tensor:
    """Merge given ``audio_codes`` (one row per ``<audio_pad>``, ``-1`` rows for frames of waveform blocks, as the
    processor returns them) with the codes the audio tokenizer computed from ``input_features`` (pieces in order):
    the ``-1`` rows are filled, in order, with the rows of ``encoded_codes``. Returns a new (n_pads, num_codebooks)
    tensor."""
    audio_codes = audio_codes.reshape(-1, audio_codes.shape[-1])
    todo = audio_codes[:, 0] < 0
    if int(todo.sum()) != encoded_codes.shape[0]:
        raise ValueError(
            f"audio_codes has {int(todo.sum())} frames to fill from input_features but the audio tokenizer gave "
            f"{encoded_codes.shape[0]}"
        )
    out = audio_codes.clone()
    out[todo] = encoded_codes.to(out.device, out.dtype)
    return out


@dataclass
class BaichuanAudioOutputWithPast(ModelOutput):
    r"""Output of :class:`BaichuanAudioForConditionalGeneration`.

    Args:
        loss: ``text_loss_weight * text_loss + audio_loss`` (whichever parts have labels).
        text_loss: shifted text cross-entropy (labels -100 ignored).
        audio_loss: ``sum_i audio_loss_weights[i] * audio_losses[i]``.
        audio_losses: (num_codebooks,) unweighted per-codebook audio cross-entropies.
        logits: (B, T or logits_to_keep, vocab) text logits.
        audio_logits: list of num_codebooks tensors (N, codebook_sizes[i] + 1), teacher-forced, for the N positions
            selected by ``audio_labels`` (row-major); only when ``audio_labels`` is given (one dummy row with a zero
            loss when no position has an audio label).
        cache: the LLM KV cache.
        hidden_states / attentions: of the LLM (hidden_states[-1] is the final RMSNorm-ed state).
        last_hidden_state: (B, T, H) final RMSNorm-ed LLM states (the audio head's input, the original
            ``audios_emb_for_infer`` at the last position).
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    audio_loss: torch.FloatTensor | None = None
    audio_losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_logits: list[torch.FloatTensor] | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    last_hidden_state: torch.FloatTensor | None = None


class BaichuanAudioPreTrainedModel(PreTrainedModel):
    config: BaichuanAudioConfig
    config_class = BaichuanAudioConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    output_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "BaichuanAudioHead", "BaichuanAudioEmbeddings"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # code2wav runs in fp32 (as the original), and the RVQ codebooks are fp32 in the original.
    _keep_in_fp32_modules_strict = ["code2wav", "codebook"]

    @torch.no_grad()
    def _init_weights(self, module):
        # Linear / Embedding / RMSNorm are covered by the base initialisation (std = config.initializer_range).
        super()._init_weights(module)


class BaichuanAudioEmbeddings(nn.Module):
    """The 8 audio embedding tables (``codebook_sizes[i] + 1`` rows: the last row is end-of-audio).

    ``forward(codes (..., num_codebooks)) -> (..., hidden)`` is the sum over the tables (left to right, as the
    original). The audio head reuses these tables for its cumulative code inputs.
    """

    def __init__(self, config: BaichuanAudioConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.embeddings = nn.ModuleList([nn.Embedding(size + 1, hidden) for size in config.codebook_sizes])

    def forward(self, codes: torch.LongTensor) -> torch.Tensor:
        embeds = self.embeddings[0](codes[..., 0])
        for i in range(1, len(self.embeddings)):
            embeds = embeds + self.embeddings[i](codes[..., i])
        return embeds


class BaichuanAudioModel(BaichuanAudioPreTrainedModel):
    """LLM + audio input: embeds text, substitutes the audio frames at ``<audio_pad>`` positions, runs Qwen2."""

    def __init__(self, config: BaichuanAudioConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.audio_embed = BaichuanAudioEmbeddings(config)
        self.audio_tokenizer = BaichuanAudioTokenizerModel._from_config(config.audio_tokenizer_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_decoder(self):
        return self.language_model

    @torch.no_grad()
    def get_audio_codes(
        self,
        input_features: torch.Tensor,
        encoder_length: torch.Tensor,
        bridge_length: torch.Tensor | None = None,
    ) -> torch.LongTensor:
        """Encode speech features to codes (sum(bridge_length), num_codebooks), pieces concatenated in order."""
        return self.audio_tokenizer(input_features, encoder_length, bridge_length).audio_codes

    def embed_inputs(self, input_ids: torch.LongTensor, audio_codes: torch.LongTensor | None) -> torch.Tensor:
        """Text embeddings with the audio frames substituted at the ``<audio_pad>`` positions."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        pad_mask = input_ids == self.config.audio_pad_token_id
        n_pads = int(pad_mask.sum())
        n_frames = 0
        if audio_codes is not None:
            audio_codes = audio_codes.reshape(-1, audio_codes.shape[-1])
            n_frames = audio_codes.shape[0]
        if n_pads != n_frames:
            raise ValueError(
                f"The number of <audio_pad> tokens in input_ids ({n_pads}) differs from the number of audio frames "
                f"({n_frames}). Each frame of `audio_codes` (or of the encoded `input_features`) fills one "
                "<audio_pad> position, in order; check that the prompt was not truncated and that codes are given "
                "only for the positions being forwarded."
            )
        if n_frames == 0:
            return inputs_embeds
        embed_device = self.audio_embed.embeddings[0].weight.device
        audio_embeds = self.audio_embed(audio_codes.to(embed_device))
        audio_embeds = audio_embeds.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(pad_mask.unsqueeze(-1).to(inputs_embeds.device), audio_embeds)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        audio_codes: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        encoder_length: torch.LongTensor | None = None,
        bridge_length: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids: (B, T) token ids; ``<audio_pad>`` positions receive the audio frames.
            attention_mask: (B, T_past + T) padding mask (1 = token).
            position_ids: (B, T) positions (the original's generation uses ``attention_mask.cumsum(-1)``).
            cache: KV cache of the LLM (``DynamicCache``).
            inputs_embeds: (B, T, H) embeddings given directly (no audio substitution then).
            audio_codes: (N, num_codebooks) codes of the N frames, N = number of ``<audio_pad>`` in ``input_ids``.
            input_features: (pieces, n_mels, frames) log-mel features, encoded to codes under no_grad; when
                ``audio_codes`` is also given, its ``-1`` rows (frames of waveform blocks, as the processor returns
                them) are filled with the encoded codes in order. ``encoder_length`` / ``bridge_length``: (pieces,)
                lengths per piece.
        Returns:
            ``BaseModelOutputWithPast`` with the final RMSNorm-ed ``last_hidden_state`` (B, T, H).
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
            if input_features is not None:
                encoded = self.get_audio_codes(input_features, encoder_length, bridge_length)
                audio_codes = encoded if audio_codes is None else fill_audio_codes(audio_codes, encoded)
            inputs_embeds = self.embed_inputs(input_ids, audio_codes)
        elif input_ids is not None:
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class BaichuanAudioForConditionalGeneration(
    BaichuanAudioGenerationMixin, BaichuanAudioPreTrainedModel, GenerationMixin
):
    """Baichuan-Audio: text logits (``lm_head``), audio-frame logits (``audio_head``) and code2wav.

    ``generate()`` of ``GenerationMixin`` produces text (audio input as ``audio_codes`` or ``input_features`` in the
    prompt); interleaved audio output is produced by the dedicated audio generation loop.
    """

    def __init__(self, config: BaichuanAudioConfig):
        super().__init__(config)
        self.model = BaichuanAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.audio_head = BaichuanAudioHead(config.audio_head_config)
        self.code2wav = (
            BaichuanAudioCode2Wav._from_config(config.code2wav_config) if config.enable_audio_output else None
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *model_args, vocoder=None, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus on-the-fly conversion of ORIGINAL-layout checkpoints.

        A local directory whose ``config.json`` has ``model_type: "omni"`` (the released Baichuan-Audio layout) is
        converted in memory by :func:`transformers_baichuan_audio.conversion.convert.load_original_model`, with the
        same key and shape checks as ``baichuan-audio convert``; ``vocoder`` is then the path of the HiFT weights
        (``hift.pt``), without which audio output is disabled. Download hub repos of the original layout first
        (``huggingface_hub.snapshot_download``), or convert them once with ``baichuan-audio convert``.
        """
        if pretrained_model_name_or_path is not None and not model_args:
            from ..conversion.convert import is_original_checkpoint, load_original_model

            if is_original_checkpoint(pretrained_model_name_or_path):
                return load_original_model(pretrained_model_name_or_path, vocoder, **kwargs)
        if vocoder is not None:
            raise ValueError("`vocoder=` is only used when loading an original-layout (model_type 'omni') checkpoint")
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _from_converted_state_dict(cls, config: BaichuanAudioConfig, state_dict: dict, **kwargs):
        """Load an in-memory converted state dict through the regular loading path (dtype, device_map, ...)."""
        return super().from_pretrained(None, config=config, state_dict=state_dict, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model.get_decoder()

    @property
    def audio_embed(self) -> BaichuanAudioEmbeddings:
        return self.model.audio_embed

    @property
    def audio_tokenizer(self):
        return self.model.audio_tokenizer

    def audio_head_logits(self, hidden: torch.Tensor, codes: torch.LongTensor) -> list[torch.Tensor]:
        """Teacher-forced audio-head logits for (N, H) final hidden states and (N, num_codebooks) codes."""
        head_device = self.audio_head.norm.weight.device
        return self.audio_head(hidden.to(head_device), codes.to(head_device), self.model.audio_embed)

    def compute_audio_loss(
        self, last_hidden_state: torch.Tensor, audio_labels: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(weighted total, per-codebook CE (num_codebooks,), logits list) for ``audio_labels`` (B, T, K)."""
        selected = (audio_labels != -100).any(dim=-1).to(last_hidden_state.device)
        labels = audio_labels.to(last_hidden_state.device)[selected]
        if labels.shape[0] == 0:
            # No audio target in this batch: run the head on one dummy row with all labels ignored, so that every
            # head parameter still takes part in the graph (zero gradient; DDP expects all parameters to be used).
            labels = audio_labels.new_full((1, audio_labels.shape[-1]), -100).to(last_hidden_state.device)
            hidden = last_hidden_state.reshape(-1, last_hidden_state.shape[-1])[:1]
        else:
            hidden = last_hidden_state[selected]
        logits = self.audio_head_logits(hidden, labels.clamp(min=0))
        losses = []
        for i, logits_i in enumerate(logits):
            target = labels[:, i].to(logits_i.device)
            if bool((target != -100).any()):
                losses.append(F.cross_entropy(logits_i.float(), target, ignore_index=-100))
            else:  # nothing to learn for this codebook: zero contribution, graph kept connected
                losses.append(logits_i.float().sum() * 0.0)
        per_codebook = torch.stack([loss.to(losses[0].device) for loss in losses])
        weights = torch.tensor(self.config.audio_loss_weights, dtype=per_codebook.dtype, device=per_codebook.device)
        return (weights * per_codebook).sum(), per_codebook, logits

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        audio_codes: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        encoder_length: torch.LongTensor | None = None,
        bridge_length: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        audio_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaichuanAudioOutputWithPast:
        r"""
        Args:
            input_ids / attention_mask / position_ids / cache / inputs_embeds / audio_codes / input_features /
                encoder_length / bridge_length / use_cache: see :meth:`BaichuanAudioModel.forward`.
            labels: (B, T) text labels (-100 ignored); shifted inside (position t predicts labels[t + 1]).
            audio_labels: (B, T, num_codebooks) audio labels, see the module docstring for the layout.
            logits_to_keep: keep only the last ``logits_to_keep`` text logits (0 = all).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            audio_codes=audio_codes,
            input_features=input_features,
            encoder_length=encoder_length,
            bridge_length=bridge_length,
            use_cache=use_cache,
            **kwargs,
        )
        last_hidden_state = outputs.last_hidden_state
        logits = self.lm_head(slice_logits_to_keep(last_hidden_state, logits_to_keep))

        loss = text_loss = audio_loss = audio_losses = audio_logits = None
        if labels is not None:
            text_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
            loss = self.config.text_loss_weight * text_loss
        if audio_labels is not None:
            audio_loss, audio_losses, audio_logits = self.compute_audio_loss(last_hidden_state, audio_labels)
            loss = audio_loss if loss is None else loss + audio_loss.to(loss.device)

        return BaichuanAudioOutputWithPast(
            loss=loss,
            text_loss=text_loss,
            audio_loss=audio_loss,
            audio_losses=audio_losses,
            logits=logits,
            audio_logits=audio_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            last_hidden_state=last_hidden_state,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        """The standard preparation; the audio inputs (codes / features / lengths) are forwarded only in prefill."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in _AUDIO_GENERATION_INPUTS:
                model_inputs.pop(key, None)
        return model_inputs


# ---------------------------------------------------------------------------------------------------------------------
# Original checkpoint -> this layout (LLM, audio embeddings, text LM head, audio head)
# ---------------------------------------------------------------------------------------------------------------------

_LLM_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_HEAD_LAYER_RENAMES = {
    "layernorm1.weight": "input_layernorm.weight",
    "layernorm2.weight": "post_attention_layernorm.weight",
    "self_attention.out_proj.weight": "self_attn.o_proj.weight",
    "self_attention.out_proj.bias": "self_attn.o_proj.bias",
}
#: Original keys dropped on purpose: the depth-transformer FFN biases exist in the checkpoint but the original forward
#: never uses them (adding them would change the outputs).
DROPPED_ORIGINAL_KEYS = (
    r"audio_head\.transformer_layers\.\d+\.linear1\.bias",
    r"audio_head\.transformer_layers\.\d+\.linear2\.bias",
)
_OWNED_PREFIXES = ("model.", "lm_head.", "audio_head.")
_QKV_BIAS_KEY = r"model\.layers\.\d+\.self_attn\.(W_pack|[qkv]_proj)\.bias"


def _split_rows(tensor: torch.Tensor, sizes: list[int], key: str) -> list[torch.Tensor]:
    if tensor.shape[0] != sum(sizes):
        raise ValueError(f"{key}: expected {sum(sizes)} rows to split into {sizes}, got shape {tuple(tensor.shape)}")
    return [t.clone() for t in torch.split(tensor, sizes, dim=0)]


def convert_original_model_weights(
    original: Mapping[str, torch.Tensor],
    config: BaichuanAudioConfig | None = None,
    *,
    qkv_bias: bool = True,
    norm_head: bool = False,
    tie_word_embeddings: bool = False,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map the original ``OmniForCausalLM`` LLM / audio-embedding / LM-head / audio-head weights to this layout.

    Handles the original keys under ``model.``, ``lm_head.`` and ``audio_head.``; other keys (``audio_tokenizer.*``)
    are left to the tokenizer / code2wav converters. Keys of the result are relative to
    :class:`BaichuanAudioForConditionalGeneration`.

    * ``model.layers.{l}.self_attn.W_pack`` (fused q|k|v, with bias) is split by ``[q | kv | kv]`` widths
      (``num_attention_heads * head_dim`` / ``num_key_value_heads * head_dim`` of ``config.text_config``).
    * ``model.audio_embed_layers.{i}`` -> ``model.audio_embed.embeddings.{i}``; other ``model.*`` ->
      ``model.language_model.*``.
    * ``audio_head.transformer_layers.{l}.self_attention.in_proj_{weight,bias}`` -> ``q/k/v_proj``; ``linear1`` /
      ``linear2`` weights viewed as (I, P, H) / (H, P, I) are sliced per position into ``mlp.{p}.fc1`` / ``fc2``;
      ``headnorm`` -> ``norm``; ``heads.{i}`` unchanged. The unused ``linear1.bias`` / ``linear2.bias`` are dropped.

    * Separate ``self_attn.{q,k,v}_proj`` (original ``attention_qkv_pack=false``) keep their names.
    * ``qkv_bias=False`` (original ``attention_qkv_bias=false``, its default): Qwen2 always has q/k/v biases, so zero
      biases are written next to the weights (adding zero is exact).
    * ``norm_head=True`` (original ``use_norm_head``, its default): the original ``NormHead`` L2-normalises the rows of
      its weight on every call; the normalised rows are stored, so the plain linear LM head gives the same logits
      (normalised in float32, stored in the checkpoint's dtype; fine-tuning no longer renormalises).
    * ``tie_word_embeddings=True``: the LM head is the input embedding (``lm_head.weight`` is written from
      ``model.embed_tokens.weight``; a stored ``lm_head.weight`` is the same tensor and is dropped).

    With ``config`` every key converts on its own (shard by shard); without it, the split sizes are read from the
    shapes of sibling keys (``o_proj``, ``layernorm1``, ``linear1``), which must then be in ``original`` too.

    Returns:
        ``(converted, handled)``: the new state dict and the set of original keys consumed (converted or dropped).
    Raises:
        KeyError for an unknown key under the handled prefixes; ValueError for inconsistent shapes.
    """
    converted: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    for key, tensor in original.items():
        if not key.startswith(_OWNED_PREFIXES):
            continue
        if any(re.fullmatch(pattern, key) for pattern in DROPPED_ORIGINAL_KEYS):
            handled.add(key)
            continue
        if not qkv_bias and re.fullmatch(_QKV_BIAS_KEY, key):  # the original has no such parameter: never loaded
            handled.add(key)
            continue
        if key.startswith("model."):
            new = _convert_llm_key(key, tensor, original, config)
            if new is not None and not qkv_bias:
                new.update(_zero_qkv_biases(new))
            if key == "model.embed_tokens.weight" and tie_word_embeddings:
                new["lm_head.weight"] = _lm_head_weight(tensor, norm_head, copy=True)
        elif key == "lm_head.weight":
            new = {} if tie_word_embeddings else {"lm_head.weight": _lm_head_weight(tensor, norm_head)}
        else:
            new = _convert_head_key(key, tensor, original, config)
        if new is None:
            raise KeyError(f"unknown original key {key!r} (shape {tuple(tensor.shape)}) under {_OWNED_PREFIXES}")
        converted.update(new)
        handled.add(key)
    return converted, handled


def _zero_qkv_biases(converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero ``q/k/v_proj.bias`` for the q/k/v weights among ``converted`` (an original without qkv biases)."""
    return {
        key[: -len("weight")] + "bias": tensor.new_zeros(tensor.shape[0])
        for key, tensor in converted.items()
        if re.search(r"self_attn\.[qkv]_proj\.weight$", key)
    }


def _lm_head_weight(tensor: torch.Tensor, norm_head: bool, copy: bool = False) -> torch.Tensor:
    if norm_head:  # what the original NormHead computes on every call
        return torch.nn.functional.normalize(tensor.float()).to(tensor.dtype)
    return tensor.clone() if copy else tensor


def _lookup(original: Mapping[str, torch.Tensor], key: str, needed_for: str) -> torch.Tensor:
    if key not in original:
        raise KeyError(
            f"{needed_for}: pass `config` to size the split, or convert it together with {key!r} (its shape is used)"
        )
    return original[key]


def _convert_llm_key(key, tensor, original, config) -> dict[str, torch.Tensor] | None:
    if m := re.fullmatch(r"model\.audio_embed_layers\.(\d+)\.weight", key):
        return {f"model.audio_embed.embeddings.{m.group(1)}.weight": tensor}
    if key in ("model.embed_tokens.weight", "model.norm.weight"):
        return {"model.language_model." + key[len("model.") :]: tensor}
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"model.language_model.layers.{layer}."
    if rest in _LLM_LAYER_RENAMES:
        return {prefix + _LLM_LAYER_RENAMES[rest]: tensor}
    if re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", rest):  # original attention_qkv_pack=false
        return {prefix + rest: tensor}
    if rest in ("self_attn.W_pack.weight", "self_attn.W_pack.bias"):
        if config is not None:
            text = config.text_config
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            q_width, kv_width = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
            if tensor.shape[0] != q_width + 2 * kv_width:
                raise ValueError(
                    f"{key}: shape {tuple(tensor.shape)} does not match text_config (q {q_width}, kv {kv_width})"
                )
        else:  # q width = input width of o_proj
            q_width = _lookup(original, f"model.layers.{layer}.self_attn.o_proj.weight", key).shape[1]
            kv_width = (tensor.shape[0] - q_width) // 2
        q, k, v = _split_rows(tensor, [q_width, kv_width, kv_width], key)
        suffix = rest.rsplit(".", 1)[1]
        return {f"{prefix}self_attn.{name}_proj.{suffix}": t for name, t in zip("qkv", (q, k, v))}
    return None


def _convert_head_key(key, tensor, original, config) -> dict[str, torch.Tensor] | None:
    if key == "audio_head.headnorm.weight":
        return {"audio_head.norm.weight": tensor}
    if re.fullmatch(r"audio_head\.heads\.\d+\.(weight|bias)", key):
        return {key: tensor}
    m = re.fullmatch(r"audio_head\.transformer_layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"audio_head.layers.{layer}."
    if rest in _HEAD_LAYER_RENAMES:
        return {prefix + _HEAD_LAYER_RENAMES[rest]: tensor}
    if rest in ("self_attention.in_proj_weight", "self_attention.in_proj_bias"):
        hidden = tensor.shape[0] // 3
        q, k, v = _split_rows(tensor, [hidden, hidden, hidden], key)
        suffix = "weight" if rest.endswith("weight") else "bias"
        return {f"{prefix}self_attn.{name}_proj.{suffix}": t for name, t in zip("qkv", (q, k, v))}
    if rest in ("linear1.weight", "linear2.weight"):
        layer_prefix = f"audio_head.transformer_layers.{layer}."
        if config is not None:
            positions = config.num_codebooks
        elif rest == "linear1.weight":  # (I, P * H) with H the width of layernorm1
            positions = tensor.shape[1] // _lookup(original, layer_prefix + "layernorm1.weight", key).shape[0]
        else:  # (H, P * I) with I the rows of linear1
            positions = tensor.shape[1] // _lookup(original, layer_prefix + "linear1.weight", key).shape[0]
        if tensor.shape[1] % positions != 0:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} is not split into {positions} positions")
        # linear1 (I, P * H) -> (I, P, H): position p is fc1.weight (I, H);
        # linear2 (H, P * I) -> (H, P, I): position p is fc2.weight (H, I).
        per_position = tensor.reshape(tensor.shape[0], positions, -1).unbind(dim=1)
        name = "fc1" if rest == "linear1.weight" else "fc2"
        return {f"{prefix}mlp.{p}.{name}.weight": w.contiguous().clone() for p, w in enumerate(per_position)}
    return None


__all__ = [
    "BaichuanAudioPreTrainedModel",
    "BaichuanAudioEmbeddings",
    "BaichuanAudioModel",
    "BaichuanAudioForConditionalGeneration",
    "BaichuanAudioOutputWithPast",
    "convert_original_model_weights",
    "DROPPED_ORIGINAL_KEYS",
]
