"""Original audio-tokenizer weights -> :class:`~transformers_baichuan_audio.modeling.audio_tokenizer.BaichuanAudioTokenizerModel` keys."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

ENCODER_PREFIX = "audio_tokenizer.audio_model."
BRIDGE_PREFIX = "audio_tokenizer.audio_bridge_model."
_CODE2WAV_BRIDGE_PREFIX = BRIDGE_PREFIX + "proj_decoder."

_ENCODER_KEY = re.compile(
    r"(conv[12]\.(weight|bias)"
    r"|layers\.\d+\.(self_attn\.(q_proj|v_proj|out_proj)\.(weight|bias)|self_attn\.k_proj\.weight"
    r"|(self_attn_layer_norm|final_layer_norm|fc1|fc2)\.(weight|bias))"
    r"|layer_norm\.(weight|bias))"
)
_BRIDGE_KEY = re.compile(r"(gate_proj|up_proj|down_proj)\.weight|layer_norm\.(weight|bias)")
_CODEBOOK_KEY = re.compile(r"vq_list\.(\d+)\.codebook\.(embed|embed_avg|cluster_size)")

# Original tensors deliberately not loaded: the encoder's sinusoid table (regenerated) and the RVQ EMA training state.
DROPPED_ORIGINAL_SUFFIXES = ("audio_model.positional_embedding", "codebook.embed_avg", "codebook.cluster_size")


def convert_original_audio_tokenizer_weights(
    original: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map the audio-tokenizer part of an ORIGINAL Baichuan-Audio state dict to :class:`BaichuanAudioTokenizerModel`.

    Mapping (``{i}`` = layer / codebook index):

    * ``audio_tokenizer.audio_model.X`` -> ``encoder.X`` (conv1, conv2, ``layers.{i}.*``, layer_norm);
    * ``audio_tokenizer.audio_bridge_model.{gate_proj,up_proj,down_proj,layer_norm}.*`` -> ``bridge.*``;
    * ``audio_tokenizer.audio_bridge_model.vq_list.{i}.codebook.embed`` -> ``quantizer.codebooks.{i}.embed`` (fp32).

    Deliberately dropped (reported as handled): ``audio_model.positional_embedding`` (deterministic, regenerated),
    ``vq_list.{i}.codebook.embed_avg`` and ``.cluster_size`` (EMA training state). Not touched (not reported):
    ``audio_bridge_model.proj_decoder.*`` (code2wav) and every key outside the two prefixes.

    Returns:
        ``(state_dict, handled)``: new keys relative to the tokenizer model, and the original keys consumed or dropped.

    Raises:
        KeyError: a key under the two prefixes that this mapping does not know (naming the key).
    """
    new_state: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    for key, tensor in original.items():
        if key.startswith(ENCODER_PREFIX):
            rest = key[len(ENCODER_PREFIX) :]
            if rest == "positional_embedding":
                handled.add(key)
                continue
            if not _ENCODER_KEY.fullmatch(rest):
                raise KeyError(f"unknown audio encoder key in the original checkpoint: {key!r}")
            new_state[f"encoder.{rest}"] = tensor
            handled.add(key)
        elif key.startswith(BRIDGE_PREFIX):
            if key.startswith(_CODE2WAV_BRIDGE_PREFIX):
                continue
            rest = key[len(BRIDGE_PREFIX) :]
            if _BRIDGE_KEY.fullmatch(rest):
                new_state[f"bridge.{rest}"] = tensor
            elif match := _CODEBOOK_KEY.fullmatch(rest):
                if match.group(2) == "embed":
                    new_state[f"quantizer.codebooks.{match.group(1)}.embed"] = tensor.to(torch.float32)
            else:
                raise KeyError(f"unknown audio bridge key in the original checkpoint: {key!r}")
            handled.add(key)
    return new_state, handled


__all__ = ["DROPPED_ORIGINAL_SUFFIXES", "convert_original_audio_tokenizer_weights", "ENCODER_PREFIX", "BRIDGE_PREFIX"]
