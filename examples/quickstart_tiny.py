"""Build a small random Baichuan-Audio, run it on speech codes, round-trip it through save/from_pretrained.

Runs offline in seconds on a CPU. The weights are random, so the outputs are noise: this shows the API, not quality.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoModelForCausalLM

import transformers_baichuan_audio  # noqa: F401  (registers the Auto classes)
from transformers_baichuan_audio import BaichuanAudioConfig


def main() -> None:
    torch.manual_seed(0)
    config = BaichuanAudioConfig.tiny()
    model = AutoModelForCausalLM.from_config(config).eval()

    # A prompt with 5 audio frames: <audio_start> <audio_pad> x5 <audio_end>, plus their 8 codes per frame.
    frames = 5
    ids = [config.user_token_id, config.audio_start_token_id] + [config.audio_pad_token_id] * frames
    ids += [config.audio_end_token_id, config.audiotext_start_token_id, config.assistant_token_id]
    input_ids = torch.tensor([ids])
    codes = torch.stack([torch.randint(0, size, (frames,)) for size in config.codebook_sizes], dim=-1)

    with torch.no_grad():
        out = model(input_ids=input_ids, audio_codes=codes)
    print(f"text logits {tuple(out.logits.shape)}; last hidden {tuple(out.last_hidden_state.shape)}")

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        with torch.no_grad():
            again = reloaded(input_ids=input_ids, audio_codes=codes)
    same = torch.equal(out.logits, again.logits)
    print(f"save_pretrained -> from_pretrained gives identical logits: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
