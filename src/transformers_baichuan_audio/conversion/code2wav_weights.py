"""Original code2wav weights -> :class:`~transformers_baichuan_audio.modeling.code2wav.BaichuanAudioCode2Wav` keys.

The reconstruction decoder (``audio_tokenizer.audio_decoder.*``), the flow-matching prenet and matcha U-Net
(``audio_tokenizer.audio_flow_matching_decoder.*``), the bridge's ``proj_decoder`` and the RVQ tables (read again:
code2wav dequantises codes itself), and the HiFT vocoder's ``hift.pt`` state dict (weight norm folded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .config import ConversionError

_ORIG = "audio_tokenizer."
_DEC = _ORIG + "audio_decoder."
_FM = _ORIG + "audio_flow_matching_decoder."
_PRENET = _FM + "prenet."
_UNET = _FM + "conditional_decoder."
_PROJ = _ORIG + "audio_bridge_model.proj_decoder."
_VQ = re.compile(r"^audio_tokenizer\.audio_bridge_model\.vq_list\.(\d+)\.codebook\.embed$")

_UNET_RULES = [
    (r"^time_mlp\.(linear_[12])\.(weight|bias)$", r"time_mlp.\1.\2"),
    (r"^(down|mid|up)_blocks\.(\d+)\.0\.block([12])\.block\.0\.(weight|bias)$", r"\1_blocks.\2.resnet.block\3.conv.\4"),
    (r"^(down|mid|up)_blocks\.(\d+)\.0\.block([12])\.block\.2\.(weight|bias)$", r"\1_blocks.\2.resnet.block\3.norm.\4"),
    (r"^(down|mid|up)_blocks\.(\d+)\.0\.mlp\.1\.(weight|bias)$", r"\1_blocks.\2.resnet.time_proj.\3"),
    (r"^(down|mid|up)_blocks\.(\d+)\.0\.res_conv\.(weight|bias)$", r"\1_blocks.\2.resnet.res_conv.\3"),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.attn1\.to_([qkv])\.weight$",
        r"\1_blocks.\2.transformer_blocks.\3.attn.to_\4.weight",
    ),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.attn1\.to_out\.0\.(weight|bias)$",
        r"\1_blocks.\2.transformer_blocks.\3.attn.to_out.\4",
    ),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.(norm[13])\.(weight|bias)$",
        r"\1_blocks.\2.transformer_blocks.\3.\4.\5",
    ),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.ff\.net\.0\.proj\.(weight|bias)$",
        r"\1_blocks.\2.transformer_blocks.\3.ff.proj_in.\4",
    ),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.ff\.net\.0\.(alpha|beta)$",  # snakebeta activation
        r"\1_blocks.\2.transformer_blocks.\3.ff.\4",
    ),
    (
        r"^(down|mid|up)_blocks\.(\d+)\.1\.(\d+)\.ff\.net\.2\.(weight|bias)$",
        r"\1_blocks.\2.transformer_blocks.\3.ff.proj_out.\4",
    ),
    (r"^(down|up)_blocks\.(\d+)\.2\.(?:conv\.)?(weight|bias)$", r"\1_blocks.\2.sampler.\3"),
    (r"^final_block\.block\.0\.(weight|bias)$", r"final_block.conv.\1"),
    (r"^final_block\.block\.2\.(weight|bias)$", r"final_block.norm.\1"),
    (r"^final_proj\.(weight|bias)$", r"final_proj.\1"),
]
_UNET_RULES = [(re.compile(p), r) for p, r in _UNET_RULES]

_DECODER_KEY = re.compile(
    r"^(dconv[12]\.(conv|norm)\.(weight|bias)|layer_norm\.(weight|bias)|post_net\.layers\.\d+\.(weight|bias)"
    r"|layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|self_attn_layer_norm|final_layer_norm|fc1|fc2)"
    r"\.(weight|bias))$"
)
_PRENET_KEY = re.compile(
    r"^(in_mlp\.[02]\.(weight|bias)|final_norm\.weight|out_proj\.weight"
    r"|transformer_layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|self_attn_layer_norm|final_layer_norm"
    r"|fc1|fc2)\.(weight|bias))$"
)
_VOCODER_KEY = re.compile(
    r"^(conv_pre|conv_post|ups\.\d+|source_downs\.\d+|m_source\.l_linear|f0_predictor\.condnet\.\d+"
    r"|f0_predictor\.classifier|(source_)?resblocks\.\d+\.convs[12]\.\d+)\.(weight|bias|weight_g|weight_v)$"
    r"|^(source_)?resblocks\.\d+\.activations[12]\.\d+\.alpha$"
)


class Code2WavConversionError(ConversionError):
    """Unknown or missing keys while converting original code2wav / vocoder weights."""


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Legacy ``torch.nn.utils.weight_norm`` (dim=0): ``g * v / ||v||`` with the norm over all dims but 0, computed by
    the public ``torch.nn.utils.parametrizations.weight_norm`` (the same kernel the original runs before every
    forward, so the folded weight is bit-identical)."""
    carrier = torch.nn.Module()
    carrier.weight = torch.nn.Parameter(torch.empty_like(weight_v), requires_grad=False)
    torch.nn.utils.parametrizations.weight_norm(carrier, name="weight", dim=0)
    with torch.no_grad():
        carrier.parametrizations.weight.original0.copy_(weight_g)
        carrier.parametrizations.weight.original1.copy_(weight_v)
        return carrier.weight.detach().clone()


def convert_original_vocoder_weights(vocoder: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``HiFTGenerator.state_dict()`` (weight norm as ``weight_g``/``weight_v``) -> ``vocoder.*`` keys, folded."""
    unknown = sorted(k for k in vocoder if not _VOCODER_KEY.match(k))
    if unknown:
        raise Code2WavConversionError(f"unknown vocoder keys: {unknown[:20]}{' ...' if len(unknown) > 20 else ''}")
    out: dict[str, torch.Tensor] = {}
    for key, value in vocoder.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            base = key[: -len(".weight_g")]
            if base + ".weight_v" not in vocoder:
                raise Code2WavConversionError(f"vocoder: {key} without {base}.weight_v")
            out["vocoder." + base + ".weight"] = fold_weight_norm(value, vocoder[base + ".weight_v"])
        else:
            out["vocoder." + key] = value
    orphans = [k for k in vocoder if k.endswith(".weight_v") and k[: -len("v")] + "g" not in vocoder]
    if orphans:
        raise Code2WavConversionError(f"vocoder: weight_v without weight_g: {orphans}")
    return out


def convert_original_code2wav_weights(
    original: Mapping[str, torch.Tensor], vocoder: Mapping[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Original checkpoint (full state dict, original key names) + HiFT state dict -> ``BaichuanAudioCode2Wav`` keys.

    Handles ``audio_tokenizer.audio_decoder.*``, ``audio_tokenizer.audio_flow_matching_decoder.*`` and
    ``audio_tokenizer.audio_bridge_model.proj_decoder.*``; reads the RVQ tables ``...vq_list.{i}.codebook.embed``
    without claiming them (the audio tokenizer owns them too). Dropped: the decoder's and the prenet's saved
    sinusoidal ``positional_embedding`` buffers (regenerated; the prenet's is never used).

    Returns ``(state_dict, consumed)``: the new state dict (relative to ``BaichuanAudioCode2Wav``) and the set of
    original keys consumed or deliberately dropped. Raises :class:`Code2WavConversionError` naming unknown keys.
    """
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    unknown: list[str] = []
    books: dict[int, torch.Tensor] = {}
    for key, value in original.items():
        m = _VQ.match(key)
        if m:
            books[int(m.group(1))] = value
            continue
        if key.startswith(_PROJ):
            rest = key[len(_PROJ) :]
            if rest not in ("weight", "bias"):
                unknown.append(key)
                continue
            out["dequantizer.proj_decoder." + rest] = value
        elif key.startswith(_DEC):
            rest = key[len(_DEC) :]
            if rest == "positional_embedding":
                pass
            elif _DECODER_KEY.match(rest):
                out["decoder." + rest] = value
            else:
                unknown.append(key)
                continue
        elif key.startswith(_PRENET):
            rest = key[len(_PRENET) :]
            if rest == "positional_embedding":
                pass
            elif _PRENET_KEY.match(rest):
                out["prenet." + rest.replace("transformer_layers.", "layers.", 1)] = value
            else:
                unknown.append(key)
                continue
        elif key.startswith(_UNET):
            rest = key[len(_UNET) :]
            for pattern, repl in _UNET_RULES:
                if pattern.match(rest):
                    out["estimator." + pattern.sub(repl, rest)] = value
                    break
            else:
                unknown.append(key)
                continue
        elif key.startswith(_FM):
            unknown.append(key)
            continue
        else:
            continue
        consumed.add(key)
    if unknown:
        raise Code2WavConversionError(f"unknown code2wav keys in the original checkpoint: {sorted(unknown)[:20]}")
    # Codebooks may arrive in any shard (the converter streams one shard at a time); a missing one is reported by
    # the converter's final key check against the model.
    for i, table in books.items():
        out[f"dequantizer.codebooks.{i}.weight"] = table.float()
    if vocoder is not None:
        out.update(convert_original_vocoder_weights(vocoder))
    return out, consumed


__all__ = [
    "Code2WavConversionError",
    "convert_original_code2wav_weights",
    "convert_original_vocoder_weights",
    "fold_weight_norm",
]
