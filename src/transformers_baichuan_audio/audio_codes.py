"""Pure tensor helpers on audio codes, shared by the processor and the model (no model, no processor in here).

* :func:`fill_audio_codes`: merge the processor's ``audio_codes`` (``-1`` rows for frames of waveform blocks) with
  the codes the audio tokenizer computed from ``input_features``.
* :func:`cut_at_end_of_audio`: a generated segment up to its first end-of-audio frame (a code equal to its
  codebook size), as the original's ``decode_wave_vocoder`` cuts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def cut_at_end_of_audio(codes, codebook_sizes: Sequence[int] | None) -> torch.Tensor:
    """``codes`` (``(N, C)``, any integer array) as a LongTensor up to (without) its first frame that holds an
    end-of-audio code (a code ``>= codebook_sizes[i]`` in some codebook ``i``); unchanged without ``codebook_sizes``."""
    codes = torch.as_tensor(codes).long()
    codes = codes.reshape(-1, codes.shape[-1])
    if codebook_sizes is None:
        return codes
    eos = (codes >= torch.as_tensor(list(codebook_sizes), device=codes.device)[None, :]).any(-1).nonzero()
    return codes[: int(eos[0, 0])] if len(eos) else codes


__all__ = ["cut_at_end_of_audio", "fill_audio_codes"]
