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

from ..audio_codes import fill_audio_codes
from ..configuration import BaichuanAudioConfig
from .audio_head import BaichuanAudioHead
from .generation import BaichuanAudioGenerationMixin
from .placement import module_device, to_module_device

_AUDIO_GENERATION_INPUTS = ("audio_codes", "input_features", "encoder_length", "bridge_length")


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
    # device_map units: an LLM layer, the audio head, the audio embeddings and the whole code2wav (one device, or
    # offloaded as a whole: its decoding builds tensors on one device); the audio tokenizer splits at its layers.
    _no_split_modules = ["Qwen2DecoderLayer", "BaichuanAudioHead", "BaichuanAudioEmbeddings", "BaichuanAudioCode2Wav"]
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
        self.audio_tokenizer = AutoModel.from_config(config.audio_tokenizer_config)
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
        audio_embeds = self.audio_embed(to_module_device(audio_codes, self.audio_embed))
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

    # Trainer: both losses are means over the micro-batch, so Trainer divides by the accumulation steps and DDP /
    # FSDP average over ranks. Were it True, Trainer would pass a global ``num_items_in_batch`` that only the text
    # loss can use and multiply the loss by the number of processes: the audio loss would grow with them.
    accepts_loss_kwargs = False

    def __init__(self, config: BaichuanAudioConfig):
        super().__init__(config)
        self.model = BaichuanAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.audio_head = BaichuanAudioHead(config.audio_head_config)
        self.code2wav = AutoModel.from_config(config.code2wav_config) if config.enable_audio_output else None
        self.post_init()

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
        head_device = module_device(self.audio_head, self)
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


__all__ = [
    "BaichuanAudioPreTrainedModel",
    "BaichuanAudioEmbeddings",
    "BaichuanAudioModel",
    "BaichuanAudioForConditionalGeneration",
    "BaichuanAudioOutputWithPast",
]
