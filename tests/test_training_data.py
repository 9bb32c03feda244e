"""The training collator: which positions carry text loss and which frames carry audio loss, per task type.

Every expectation is built independently of the collator: the token sequence is written out by hand from the byte-level
tiny tokenizer (one id per byte), the special ids and the codes, with each piece tagged "trained" or not, following
the paper's rules (reference section 14): INTLV no audio loss, ITTS everything but the first text segment, SFT /
ASR / TTS assistant turns only. Integer labels: comparisons are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from transformers_baichuan_audio.audio_encoding import encode_audio
from transformers_baichuan_audio.tiny_random import TINY_TRAINING_CODEBOOK_SIZES, tiny_random_processor
from transformers_baichuan_audio.training import IGNORE_INDEX, BaichuanAudioCollator

K = len(TINY_TRAINING_CODEBOOK_SIZES)
EOS_FRAME = list(TINY_TRAINING_CODEBOOK_SIZES)


@pytest.fixture(scope="module")
def proc():
    return tiny_random_processor()


@pytest.fixture(scope="module")
def collator(proc):
    return BaichuanAudioCollator(proc, TINY_TRAINING_CODEBOOK_SIZES)


def codes(n, offset=0):
    return [[(offset + f + k) % TINY_TRAINING_CODEBOOK_SIZES[k] for k in range(K)] for f in range(n)]


class Expect:
    """Hand-built expectation: ids, text labels and audio labels, piece by piece."""

    def __init__(self, proc):
        self.proc, self.ids, self.labels, self.audio = proc, [], [], []
        self.sid = proc.special_token_ids

    def text(self, s, train):
        ids = self.proc.tokenizer(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(s.encode("utf-8"))  # byte-level, no merges: one id per byte
        self._add(ids, ids if train else [IGNORE_INDEX] * len(ids))

    def token(self, name, train=False):
        i = self.proc.tokenizer.eos_token_id if name == "eos" else self.sid[f"{name}_token_id"]
        self._add([i], [i if train else IGNORE_INDEX])

    def _add(self, ids, labels, audio=None):
        self.ids += ids
        self.labels += labels
        self.audio += audio or [[IGNORE_INDEX] * K] * len(ids)

    def spoken(self, c, train):
        n = len(c)
        start, pad, end = (self.sid[f"{x}_token_id"] for x in ("audiogen_start", "audio_pad", "audiogen_end"))
        audio = (c + [EOS_FRAME] + [[IGNORE_INDEX] * K]) if train else None
        self._add([start] + [pad] * n + [end], [start if train else IGNORE_INDEX] + [IGNORE_INDEX] * (n + 1), audio)

    def heard(self, n):
        start, pad, end = (self.sid[f"{x}_token_id"] for x in ("audio_start", "audio_pad", "audio_end"))
        self._add([start] + [pad] * n + [end], [IGNORE_INDEX] * (n + 2))


def check(batch, row, exp):
    n = len(exp.ids)
    assert batch["input_ids"][row, :n].tolist() == exp.ids
    assert batch["attention_mask"][row].sum().item() == n
    assert batch["labels"][row, :n].tolist() == exp.labels
    assert batch["audio_labels"][row, :n].tolist() == exp.audio
    assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and (batch["audio_labels"][row, n:] == IGNORE_INDEX).all()


def msg(role, *parts):
    return {"role": role, "content": list(parts)}


def T(s):
    return {"type": "text", "text": s}


def C(c):
    return {"type": "audio_codes", "codes": c}


def test_sft_chat_assistant_turns_only(proc, collator):
    q, a1, a2 = codes(3, 1), codes(2, 5), codes(4, 7)
    row = {
        "task": "sft",
        "messages": [
            msg("system", T("sys")),
            msg("user", C(q)),
            msg("assistant", T("Hi."), C(a1)),
            msg("user", T("more")),
            msg("assistant", T("Ok"), C(a2), T("!")),
        ],
    }
    batch = collator([row])
    e = Expect(proc)
    e.token("system"), e.text("sys", False), e.token("user"), e.heard(3)
    e.token("audiotext_start"), e.token("assistant"), e.text("Hi.", True), e.spoken(a1, True)
    e.token("user"), e.text("more", False)
    e.token("audiotext_start"), e.token("assistant"), e.text("Ok", True), e.spoken(a2, True), e.text("!", True)
    e.token("eos", True)
    check(batch, 0, e)
    # the packed codes follow the <audio_pad> order (user audio first)
    assert batch["audio_codes"].tolist() == q + a1 + a2


def test_chat_ids_match_the_processor(proc, collator):
    """The collator renders chats exactly as the processor does for inference (+ the end-of-text)."""
    messages = [msg("user", T("question")), msg("assistant", T("Yes."), C(codes(3))), msg("user", T("and?"))]
    ref = proc.apply_chat_template(
        messages, audio_output=True, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    batch = collator([{"task": "sft", "messages": messages}])
    assert batch["input_ids"][0].tolist()[:-1] == ref["input_ids"][0].tolist()[: batch["input_ids"].shape[1] - 1]
    n = batch["input_ids"].shape[1]
    # the generation prompt (<audiotext_start><C_A>) is only in the processor's ids
    assert ref["input_ids"][0].tolist()[n - 1 :] == [proc.audiotext_start_token_id, proc.assistant_token_id]
    assert batch["input_ids"][0, -1].item() == proc.tokenizer.eos_token_id


def test_asr_and_tts_raw_layouts(proc, collator):
    asr = {"task": "asr", "messages": [msg("user", T("将语音转录为文本:"), C(codes(3))), msg("assistant", T("abc"))]}
    tts_codes = codes(2, 3)
    tts = {"task": "tts", "messages": [msg("user", T("say hi")), msg("assistant", C(tts_codes))]}
    batch = collator([asr, tts])
    e = Expect(proc)
    e.text("将语音转录为文本:", False), e.heard(3), e.text("abc", True), e.token("eos", True)
    check(batch, 0, e)
    e = Expect(proc)
    e.text("say hi", False), e.spoken(tts_codes, True), e.token("eos", True)
    check(batch, 1, e)


def test_itts_all_but_first_text_segment(proc, collator):
    c1, c2 = codes(2, 1), codes(3, 2)
    row = {"task": "itts", "messages": [msg("assistant", T("one"), C(c1), T("two"), C(c2))]}
    e = Expect(proc)
    e.text("one", False), e.spoken(c1, True), e.text("two", True), e.spoken(c2, True), e.token("eos", True)
    check(collator([row]), 0, e)


def test_intlv_no_audio_loss(proc, collator):
    a1, a3 = codes(2), codes(3, 4)
    heard = {"task": "intlv", "messages": [msg("user", C(a1), T("two"), C(a3), T("four"))]}
    spoken = {"task": "intlv", "messages": [msg("assistant", T("one"), C(a1), T("three"))]}
    batch = collator([heard, spoken])
    e = Expect(proc)
    e.heard(2), e.text("two", True), e.heard(3), e.text("four", True), e.token("eos", True)
    check(batch, 0, e)
    e = Expect(proc)
    e.text("one", True), e.spoken(a1, False), e.text("three", True), e.token("eos", True)
    check(batch, 1, e)
    assert (batch["audio_labels"] == IGNORE_INDEX).all()


def test_aqa_s2tt_waveforms_give_features(proc, collator, tmp_path):
    """Waveform-only batches without audio labels go to the model as features; the pad count is the extractor's."""
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(16000).astype(np.float32) * 0.1
    path = tmp_path / "q.wav"
    sf.write(path, wav, 16000)
    aqa = {
        "task": "aqa",
        "messages": [msg("user", {"type": "audio", "path": str(path)}, T("?")), msg("assistant", T("A"))],
    }
    s2tt = {
        "task": "s2tt",
        "messages": [
            msg("user", T("translate:"), {"type": "audio", "array": wav, "sampling_rate": 16000}),
            msg("assistant", T("B")),
        ],
    }
    batch = collator([aqa, s2tt])
    frames = proc.feature_extractor.num_audio_frames(16000)
    assert "audio_codes" not in batch and batch["bridge_length"].sum().item() == 2 * frames
    e = Expect(proc)
    e.heard(frames), e.text("?", False), e.text("A", True), e.token("eos", True)
    check(batch, 0, e)
    e = Expect(proc)
    e.text("translate:", False), e.heard(frames), e.text("B", True), e.token("eos", True)
    check(batch, 1, e)


def test_mixed_waveform_and_codes_needs_tokenizer(proc, collator):
    wav = np.zeros(16000, dtype=np.float32)
    row = {
        "task": "sft",
        "messages": [
            msg("user", {"type": "audio", "array": wav, "sampling_rate": 16000}),
            msg("assistant", C(codes(2))),
        ],
    }
    with pytest.raises(ValueError, match="pre-compute"):
        collator([row])


def test_model_loss_uses_the_labels(proc, collator):
    """The collator's batch drives the model's two losses (independent check: audio CE recomputed from logits)."""
    from transformers_baichuan_audio.modeling.baichuan_audio import BaichuanAudioForConditionalGeneration
    from transformers_baichuan_audio.tiny_random import tiny_training_config

    torch.manual_seed(0)
    model = BaichuanAudioForConditionalGeneration(tiny_training_config(proc)).eval()
    row = {"task": "itts", "messages": [msg("assistant", T("ab"), C(codes(2)), T("c"), C(codes(1, 3)))]}
    batch = collator([row])
    out = model(**batch)
    labels = batch["audio_labels"][batch["audio_labels"][..., 0] != IGNORE_INDEX]
    assert labels.shape[0] == 2 + 1 + 1 + 1  # frames + one end-of-audio per segment
    ce = torch.stack([torch.nn.functional.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(out.audio_logits)])
    torch.testing.assert_close(out.audio_losses, ce)  # same fp32 ops: default tolerances


def test_collator_encodes_waveforms_with_audio_tokenizer(proc):
    """With ``audio_tokenizer=`` a batch may mix waveforms and codes: the waveform's frames are the tokenizer's codes
    (independent call: ``encode`` on the clip alone), packed in <audio_pad> order with the given codes."""
    from transformers_baichuan_audio.configuration import BaichuanAudioConfig
    from transformers_baichuan_audio.modeling.audio_tokenizer import BaichuanAudioTokenizerModel

    torch.manual_seed(0)
    tokenizer = BaichuanAudioTokenizerModel(BaichuanAudioConfig.tiny().audio_tokenizer_config).eval()
    wav = (np.random.default_rng(1).standard_normal(6000) * 0.1).astype(np.float32)
    answer = codes(2)
    row = {
        "task": "sft",
        "messages": [msg("user", {"type": "audio", "array": wav, "sampling_rate": 16000}), msg("assistant", C(answer))],
    }
    batch = BaichuanAudioCollator(proc, TINY_TRAINING_CODEBOOK_SIZES, audio_tokenizer=tokenizer)([row])
    heard = encode_audio(tokenizer, wav, 16000)[0].tolist()
    assert batch["audio_codes"].tolist() == heard + answer
    assert "input_features" not in batch
    assert (batch["input_ids"] == proc.audio_pad_token_id).sum().item() == len(heard) + len(answer)
