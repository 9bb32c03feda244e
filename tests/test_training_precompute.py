"""Audio-code pre-computation: batched, resumable after an interruption without duplicated or lost rows.

Independent expectation: each row's clips encoded one by one with ``BaichuanAudioTokenizerModel.encode`` (a separate
call path from the batched one; the encoder masks padding, so the codes are equal as integers).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transformers_baichuan_audio.audio_encoding import encode_audio
from transformers_baichuan_audio.configuration import BaichuanAudioConfig
from transformers_baichuan_audio.modeling.audio_tokenizer import BaichuanAudioTokenizerModel
from transformers_baichuan_audio.tiny_random import tiny_random_processor
from transformers_baichuan_audio.training import BaichuanAudioCollator
from transformers_baichuan_audio.training import precompute as pc


@pytest.fixture(scope="module")
def audio_tokenizer():
    torch.manual_seed(0)
    return BaichuanAudioTokenizerModel(BaichuanAudioConfig.tiny().audio_tokenizer_config).eval()


def make_rows(n=9):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        wav = (rng.standard_normal(4000 + 900 * i) * 0.1).astype(np.float32)
        content = [{"type": "audio", "array": wav.tolist(), "sampling_rate": 16000}, {"type": "text", "text": f"q{i}"}]
        rows.append(
            {
                "task": "aqa",
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": f"a{i}"}]},
                ],
            }
        )
    return rows


class Interrupting:
    """Yields the rows and raises KeyboardInterrupt when row ``stop`` is requested."""

    def __init__(self, rows, stop):
        self.rows, self.stop = rows, stop

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        for i, row in enumerate(self.rows):
            if i == self.stop:
                raise KeyboardInterrupt
            yield row


def expected_rows(rows, audio_tokenizer):
    out = []
    for row in rows:
        wav = np.asarray(row["messages"][0]["content"][0]["array"], dtype=np.float32)
        codes = encode_audio(audio_tokenizer, wav, 16000)[0].tolist()
        out.append(
            {
                "task": "aqa",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "audio_codes", "codes": codes}, row["messages"][0]["content"][1]],
                    },
                    row["messages"][1],
                ],
            }
        )
    return out


def test_resume_after_interruptions(tmp_path, audio_tokenizer, monkeypatch):
    rows = make_rows()
    out = tmp_path / "codes"
    kwargs = dict(audio_tokenizer=audio_tokenizer, output_dir=out, batch_size=2, shard_size=4, progress=False)
    # 1) interrupted while reading row 6: the shard of rows 0-3 is complete, rows 4-5 are lost work (not written)
    with pytest.raises(KeyboardInterrupt):
        pc.precompute_audio_codes(Interrupting(rows, 6), **kwargs)
    assert json.loads((out / pc.MANIFEST).read_text())["rows_done"] == 4
    # 2) crash between writing a shard and recording it in the manifest: the orphan shard is overwritten later
    real_write = pc._write_atomic

    def crash_on_manifest(path, text):
        if path.name == pc.MANIFEST:
            raise RuntimeError("killed")
        real_write(path, text)

    monkeypatch.setattr(pc, "_write_atomic", crash_on_manifest)
    with pytest.raises(RuntimeError):
        pc.precompute_audio_codes(rows, **kwargs)
    monkeypatch.setattr(pc, "_write_atomic", real_write)
    assert json.loads((out / pc.MANIFEST).read_text())["rows_done"] == 4
    # 3) resume to the end
    manifest = pc.precompute_audio_codes(rows, **kwargs)
    assert manifest["rows_done"] == len(rows) and manifest["complete"]
    assert [s["start"] for s in manifest["shards"]] == [0, 4, 8]
    result = pc.read_precomputed(out)
    assert result == expected_rows(rows, audio_tokenizer)  # every row once, in order, codes exact
    # 4) the pre-computed rows feed the collator directly (codes, no waveform)
    batch = BaichuanAudioCollator(tiny_random_processor(), audio_tokenizer.config.codebook_sizes)(result[:3])
    assert "audio_codes" in batch and "input_features" not in batch


def test_sharded_across_ranks_resume_and_merge(tmp_path, audio_tokenizer):
    """Two ranks (run here one after the other, as ``accelerate launch`` would run them side by side): each encodes
    its block, rank 1 is interrupted and resumed, and the merged manifest reads back as the one-process result."""
    rows = make_rows(7)
    out = tmp_path / "codes"
    kwargs = dict(output_dir=out, world_size=2, batch_size=2, shard_size=2, progress=False)
    assert [pc.shard_bounds(7, r, 2) for r in range(2)] == [(0, 3), (3, 7)]
    pc.precompute_audio_codes_shard(rows, audio_tokenizer, rank=0, **kwargs)
    with pytest.raises(KeyboardInterrupt):  # rank 1 stops while reading its 3rd row (global row 5)
        pc.precompute_audio_codes_shard(Interrupting(rows, 5), audio_tokenizer, rank=1, **kwargs)
    with pytest.raises(ValueError, match="rank 1 is unfinished"):
        pc.merge_shard_manifests(out, 2)
    assert pc._read_manifest(out / pc.rank_dir_name(1, 2))["rows_done"] == 2  # its first shard (rows 3-4) is kept
    pc.precompute_audio_codes_shard(rows, audio_tokenizer, rank=1, **kwargs)
    manifest = pc.merge_shard_manifests(out, 2)
    assert manifest["complete"] and manifest["rows_done"] == 7
    assert [s["start"] for s in manifest["shards"]] == [0, 2, 3, 5]
    assert pc.read_precomputed(out) == expected_rows(rows, audio_tokenizer)  # in order, each row once
    from transformers_baichuan_audio.training.scripts import load_rows

    assert len(load_rows(str(out))) == 7  # trains like a one-process output
    with pytest.raises(ValueError, match="started with 2 processes"):
        pc.precompute_audio_codes_shard(rows, audio_tokenizer, rank=0, **{**kwargs, "world_size": 3})
    with pytest.raises(TypeError, match="length"):
        pc.precompute_audio_codes_shard(iter(rows), audio_tokenizer, rank=0, **kwargs)
