"""Parity checker: run every stage of a reference fixture directory and compare with the original's outputs.

A fixture directory (format of ``shared/fixtures/reference/tiny-a``) holds a model in the ORIGINAL checkpoint layout,
its vocoder, input wavs and the original implementation's recorded outputs per stage. :func:`run_parity` converts
the weights through the same converter users run on the released checkpoints, runs each stage, prints one row per
stage (max abs error, tolerance, verdict) and a final one-line JSON summary::

    {"passed": N, "failed": M, "stages": {"name": max_abs_error, ...}}

Integer outputs (codes, token ids) count mismatching entries (tolerance 0). A stage whose expected file is absent,
or that raises, fails. Nothing about a particular fixture is assumed: sizes, ids and cases are read from the fixture.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .fixture import ReferenceFixture

# Tolerances (max abs error, fp32). The fixture README measured ~1e-6 roundoff between equivalent fp32 runs of the
# original itself (thread count, allocation history); 1e-5 / 1e-4 leave one to two orders of margin for features /
# hidden states and logits, and semantic errors show up at >= 1e-2. The vocoder integrates its NSF phase over every
# sample, amplifying roundoff, so waveforms get 1e-3 (computed from the recorded mel and NSF draws).
TOLERANCES = {
    "features": 1e-5,
    "resample": 1e-5,
    "encoder": 1e-4,
    "bridge": 1e-4,
    "codes": 0,
    "llm_logits": 1e-4,
    "llm_hidden": 1e-4,
    "audio_head": 1e-4,
    "generate_text": 0,
    "generate_audio": 0,
    "s2s": 0,
    "decoder_hidden": 1e-4,
    "prenet_mu": 1e-4,
    "flow_mel": 1e-4,
    "vocoder": 1e-3,
}


@dataclass
class StageResult:
    name: str
    error: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance


@dataclass
class ParityReport:
    results: list[StageResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def summary(self) -> dict:
        return {
            "passed": sum(r.passed for r in self.results),
            "failed": sum(not r.passed for r in self.results),
            "stages": {r.name: (r.error if math.isfinite(r.error) else None) for r in self.results},
        }


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape {tuple(a.shape)} != expected {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    return (a.detach().float().cpu() - b.float()).abs().max().item()


def _mismatches(a: torch.Tensor, b: torch.Tensor) -> float:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape {tuple(a.shape)} != expected {tuple(b.shape)}")
    return float((a.detach().cpu().long() != b.long()).sum())


def _cases(tensors: dict, suffix: str) -> list[str]:
    """Case names ``X`` of keys ``X.<suffix>``, in order."""
    return sorted({k[: -len(suffix) - 1] for k in tensors if k.endswith("." + suffix)})


class ParityContext:
    """Loads the fixture's model once (converted through the regular converter) and runs the stages."""

    def __init__(self, fixture: ReferenceFixture, attn_implementation: str = "sdpa"):
        self.fixture = fixture
        self.attn_implementation = attn_implementation
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from ..conversion.convert import load_original_model

            self.fixture.tokenizer_dir()  # makes the tokenizer files available next to the checkpoint
            self._model = load_original_model(
                self.fixture.checkpoint_dir,
                vocoder=self.fixture.vocoder_path,
                vocoder_config=self.fixture.vocoder_config,
                dtype=torch.float32,
                attn_implementation=self.attn_implementation,
            ).eval()
            # Stage runs mirror the original calls: its checkpoint's generation_config + each call's kwargs (the
            # converted model's own generation_config carries the demo's sampling defaults instead).
            original = self.fixture.checkpoint_dir / "generation_config.json"
            if original.exists():
                from transformers import GenerationConfig

                self._model.generation_config = GenerationConfig.from_dict(json.loads(original.read_text()))
        return self._model

    @property
    def config(self):
        return self.model.config

    # ----------------------------------------------------------------------------------------------- stages
    def features(self) -> tuple[float, str]:
        from ..processing.feature_extraction import BaichuanAudioFeatureExtractor

        exp = self.fixture.expected("frontend")
        fe = BaichuanAudioFeatureExtractor.from_tokenizer_config(self.config.audio_tokenizer_config)
        worst, done = 0.0, []
        for clip in _cases(exp, "encoder_length"):
            wav, sr = self.fixture.input_wav(clip)
            out = fe(wav, sampling_rate=sr, return_tensors="pt")
            for key in ("encoder_length", "bridge_length"):
                if out[key].tolist() != exp[f"{clip}.{key}"].tolist():
                    return math.inf, f"{clip}: {key} {out[key].tolist()} != {exp[f'{clip}.{key}'].tolist()}"
            for i in range(len(out["encoder_length"])):
                ref = exp[f"{clip}.mel.{i}"]
                worst = max(worst, _max_abs(out["input_features"][i, :, : ref.shape[-1]], ref))
            done.append(clip)
        if not done:
            return math.inf, "no frontend clips in the fixture"
        return worst, ",".join(done)

    def resample(self) -> tuple[float, str]:
        from ..processing.feature_extraction import resample

        exp = self.fixture.expected("frontend")
        if "resample.input" not in exp:
            return math.inf, "no resample case in the fixture"
        info = self.fixture.meta["frontend"]["resample"]
        out = resample(
            exp["resample.input"], info["orig_freq"], info["new_freq"], info.get("lowpass_filter_width", 128)
        )
        return _max_abs(torch.as_tensor(out), exp["resample.output"]), f"{info['orig_freq']}->{info['new_freq']} Hz"

    def _tokenizer_outputs(self):
        exp, front = self.fixture.expected("audio_tokenizer"), self.fixture.expected("frontend")
        meta = self.fixture.meta["audio_tokenizer"]
        results = {}
        for ctx in _cases(exp, "codes"):
            mels = []
            for clip in meta[ctx]["clips"]:
                n = len(front[f"{clip}.encoder_length"])
                mels += [front[f"{clip}.mel.{i}"] for i in range(n)]
            width = max(m.shape[-1] for m in mels)
            feats = torch.zeros(len(mels), mels[0].shape[0], width)
            for i, m in enumerate(mels):
                feats[i, :, : m.shape[-1]] = m
            with torch.no_grad():
                out = self.model.model.audio_tokenizer(feats, exp[f"{ctx}.encoder_length"], exp[f"{ctx}.bridge_length"])
            results[ctx] = out
        return exp, results

    def encoder_bridge_codes(self) -> dict[str, tuple[float, str]]:
        exp, results = self._tokenizer_outputs()
        enc, bri, codes = [0.0, []], [0.0, []], [0.0, []]
        for ctx, out in results.items():
            if f"{ctx}.encoder_out" in exp:
                ref = exp[f"{ctx}.encoder_out"]
                enc[0] = max(enc[0], _max_abs(out.encoder_last_hidden_state[:, : ref.shape[1]], ref))
                enc[1].append(ctx)
            if f"{ctx}.bridge_out" in exp:
                ref = exp[f"{ctx}.bridge_out"]
                bri[0] = max(bri[0], _max_abs(out.bridge_hidden_states[:, : ref.shape[1]], ref))
                bri[1].append(ctx)
            codes[0] += _mismatches(out.audio_codes, exp[f"{ctx}.codes"])
            codes[1].append(ctx)

        def fin(v):
            return (v[0], ",".join(v[1])) if v[1] else (math.inf, "no case in the fixture")

        return {"encoder": fin(enc), "bridge": fin(bri), "codes": fin(codes)}

    def llm(self) -> dict[str, tuple[float, str]]:
        exp = self.fixture.expected("llm")
        logits_err, hidden_err, cases = 0.0, 0.0, []
        for case in _cases(exp, "input_ids"):
            ids = exp[f"{case}.input_ids"]
            kwargs = {
                "input_ids": ids,
                "attention_mask": exp.get(f"{case}.attention_mask"),
                "position_ids": exp.get(f"{case}.position_ids"),
                "audio_codes": exp.get(f"{case}.audio_codes"),
            }
            with torch.no_grad():
                out = self.model(**kwargs, output_hidden_states=f"{case}.hidden_states" in exp)
            for key in exp:
                if not key.startswith(case + ".logits_last"):
                    continue
                n = int(key.rsplit("last", 1)[1])
                logits_err = max(logits_err, _max_abs(out.logits[:, -n:], exp[key]))
            if f"{case}.hidden_last" in exp:
                hidden_err = max(hidden_err, _max_abs(out.last_hidden_state[:, -1], exp[f"{case}.hidden_last"]))
            if f"{case}.hidden_states" in exp:
                ref = exp[f"{case}.hidden_states"]
                hidden_err = max(hidden_err, _max_abs(torch.stack(out.hidden_states), ref))
            cases.append(case)
        label = ",".join(cases) or "no case"
        if not cases:
            return {"llm_logits": (math.inf, label), "llm_hidden": (math.inf, label)}
        return {"llm_logits": (logits_err, label), "llm_hidden": (hidden_err, label)}

    def audio_head(self) -> tuple[float, str]:
        exp = self.fixture.expected("audio_head")
        with torch.no_grad():
            logits = self.model.audio_head_logits(exp["hidden"], exp["codes"])
        worst = max(_max_abs(lg, exp[f"logits.{i}"]) for i, lg in enumerate(logits))
        return worst, f"{len(logits)} codebooks x {exp['hidden'].shape[0]} rows"

    def decode(self) -> dict[str, tuple[float, str]]:
        """Reconstruction decoder, prenet and flow-matching mel with the recorded CFM noise (original batching)."""
        exp = self.fixture.expected("decode")
        c2w = self.model.code2wav
        errs = {"decoder_hidden": 0.0, "prenet_mu": 0.0, "flow_mel": 0.0}
        cases = _cases(exp, "codes")
        for case in cases:
            e = {k[len(case) + 1 :]: v for k, v in exp.items() if k.startswith(case + ".")}
            lengths = e["bridge_length"]
            with torch.no_grad():
                embeds = c2w.dequantize(e["codes"])
                padded = torch.nn.utils.rnn.pad_sequence(list(embeds.split(lengths.tolist())), batch_first=True)
                hidden, hidden_lengths = c2w.decode_hidden(padded, lengths, batch_invariant=False)
                packed = torch.cat([hidden[i, :n] for i, n in enumerate(hidden_lengths.tolist())])
                errs["decoder_hidden"] = max(errs["decoder_hidden"], _max_abs(packed, e["hidden_before_dconv2"]))
                mu, _ = c2w.prior(hidden, hidden_lengths)
                errs["prenet_mu"] = max(errs["prenet_mu"], _max_abs(mu, e["prenet_mu"]))
                mel, mel_lengths = c2w.flow_matching_mel(hidden, hidden_lengths, noise=e["cfm_noise"])
            for i, n in enumerate(mel_lengths.tolist()):
                errs["flow_mel"] = max(errs["flow_mel"], _max_abs(mel[i, :, :n].T, e["flow_mel"][i, :n]))
        label = ",".join(cases)
        if not cases:
            return {k: (math.inf, "no case") for k in errs}
        return {k: (v, label) for k, v in errs.items()}

    def vocoder(self) -> tuple[float, str]:
        from ..modeling.vocoder import NSFSourceDraws

        exp = self.fixture.expected("vocoder")
        c2w, worst, cases = self.model.code2wav, 0.0, _cases(exp, "mel_in")
        for case in cases:
            mel = exp[f"{case}.mel_in"]
            samples = exp[f"{case}.wave"].shape[-1]
            if f"{case}.sine_phase" in exp:
                draws = NSFSourceDraws(exp[f"{case}.sine_phase"], exp[f"{case}.sine_noise_std_normal"])
            else:
                draws = NSFSourceDraws.zeros(1, c2w.vocoder.m_source.num_harmonics, samples)
            with torch.no_grad():
                wave, _, _ = c2w.vocode(mel, draws=draws)
            worst = max(worst, _max_abs(wave, exp[f"{case}.wave"]))
        return (worst, ",".join(cases)) if cases else (math.inf, "no case")

    # ------------------------------------------------------------------------------------------- generation
    @property
    def eos_codes(self) -> list[int]:
        return list(self.config.codebook_sizes)

    def _segment(self, audios_sequences: torch.Tensor) -> torch.Tensor:
        """Frames of one row of the original ``audios_sequences`` before the first end-of-audio code (codebook 0)."""
        eos = self.eos_codes[0]
        hits = (audios_sequences[:, 0] == eos).nonzero()
        return audios_sequences[: int(hits[0]) if len(hits) else audios_sequences.shape[0]]

    def _encode_clip(self, name: str) -> torch.Tensor:
        wav, sr = self.fixture.input_wav(name)
        from ..audio_encoding import encode_audio

        return encode_audio(self.model.model.audio_tokenizer, wav, sr)[0]

    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.fixture.tokenizer_dir()))

    def generate_text(self) -> tuple[float, str]:
        """Greedy text generation (base ASR with the audio as features; a text chat prompt): token mismatches."""
        exp, meta = self.fixture.expected("generate_text"), self.fixture.meta["generate_text"]
        front = self.fixture.expected("frontend")
        mismatches, cases = 0.0, []
        for case in _cases(exp, "sequences"):
            kwargs = dict(meta[case]["kwargs"])
            kwargs.pop("num_beams", None)
            if not kwargs.get("do_sample", False):
                for key in ("top_k", "top_p", "temperature"):
                    kwargs.pop(key, None)
            if f"{case}.encoder_length" in exp:
                clip = meta[case]["prompt"].split("<inputs/")[1].split(".wav")[0]
                n = len(front[f"{clip}.encoder_length"])
                mels = [front[f"{clip}.mel.{i}"] for i in range(n)]
                width = max(m.shape[-1] for m in mels)
                feats = torch.zeros(n, mels[0].shape[0], width)
                for i, m in enumerate(mels):
                    feats[i, :, : m.shape[-1]] = m
                kwargs.update(
                    input_features=feats,
                    encoder_length=exp[f"{case}.encoder_length"],
                    bridge_length=exp[f"{case}.bridge_length"],
                )
            with torch.no_grad():
                out = self.model.generate(
                    exp[f"{case}.input_ids"], attention_mask=exp[f"{case}.attention_mask"], **kwargs
                )
            ref = exp[f"{case}.sequences"]
            if out.shape != ref.shape:
                return math.inf, f"{case}: {tuple(out.shape)} tokens vs {tuple(ref.shape)}"
            mismatches += _mismatches(out, ref)
            cases.append(case)
        return (mismatches, ",".join(cases)) if cases else (math.inf, "no case")

    def generate_audio(self) -> tuple[float, str]:
        """Greedy audio steps (base TTS prompts; a cache continuation; a left-padded batch): token + code mismatches."""
        exp, meta = self.fixture.expected("generate_audio"), self.fixture.meta["generate_audio"]
        gk = meta.get("generation_kwargs", {})
        kwargs = {
            "output_audio": True,
            "speech_mode": "tts",
            "switch_policy": "reference",
            "do_sample": bool(gk.get("do_sample", False)),
            "audio_max_frames": int(gk.get("max_new_tokens", 500)),
            "audio_repetition_penalty": float(gk.get("repetition_penalty", 1.3)),
        }
        mismatches, cases, caches = 0.0, [], {}
        for case in _cases(exp, "audios_sequences"):
            ids = exp.get(f"{case}.input_ids")
            cache = None
            if ids is None:
                continue
            ref_seq = exp[f"{case}.sequences"]
            if ids.shape[0] == 1 and caches:
                # a continuation: input = an earlier case's sequence with the last token replaced + a new chunk
                for prev_seq, prev_cache in caches.values():
                    n = prev_seq.shape[1] - 1
                    if ids.shape[1] > n and torch.equal(ids[0, :n], prev_seq[0, :n]):
                        cache = prev_cache
                        break
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=exp.get(f"{case}.attention_mask"), cache=cache, **kwargs)
            if cache is None:
                caches[case] = (out.sequences, out.cache)
            for row in range(ids.shape[0]):
                seg = self._segment(exp[f"{case}.audios_sequences"][row])
                ours = out.audio_codes[row][0] if out.audio_codes[row] else torch.zeros(0, seg.shape[-1])
                if ours.shape != seg.shape:
                    return math.inf, f"{case}[{row}]: {tuple(ours.shape)} frames vs {tuple(seg.shape)}"
                mismatches += _mismatches(ours, seg)
                length = int(out.sequence_lengths[row]) if getattr(out, "sequence_lengths", None) is not None else None
                length = length or out.sequences.shape[1]
                mismatches += _mismatches(out.sequences[row, :length], ref_seq[row, :length])
            cases.append(case)
        return (mismatches, ",".join(cases)) if cases else (math.inf, "no case")

    def s2s(self) -> tuple[float, str]:
        """The original speech-chat loop under the ``"reference"`` switch policy with the recorded caps."""
        exp, meta = self.fixture.expected("s2s"), self.fixture.meta["s2s"]
        tokenizer = self._tokenizer()
        mismatches, runs = 0.0, []
        for run in sorted(meta):
            info = meta[run]
            caps = info.get("caps", {})
            clip = Path(info["user_wav"]).stem
            kwargs = {
                "output_audio": True,
                "do_sample": False,
                "switch_policy": "reference",
                "tokenizer": tokenizer,
                "audio_codes": self._encode_clip(clip),
            }
            if "text" in caps:
                kwargs["text_segment_max_new_tokens"] = int(caps["text"])
            if "audio" in caps:
                kwargs["audio_max_frames"] = int(caps["audio"])
            if "rounds" in caps:
                kwargs["max_rounds"] = int(caps["rounds"])
            with torch.no_grad():
                out = self.model.generate(exp[f"{run}.text0.input_ids"], **kwargs)
            ref = exp[f"{run}.final_sequences"]
            if out.sequences.shape != ref.shape:
                return math.inf, f"{run}: {tuple(out.sequences.shape)} tokens vs {tuple(ref.shape)}"
            mismatches += _mismatches(out.sequences, ref)
            n_segments = int(info.get("n_segments", len(out.audio_codes[0])))
            if len(out.audio_codes[0]) != n_segments:
                return math.inf, f"{run}: {len(out.audio_codes[0])} audio segments vs {n_segments}"
            for k, codes in enumerate(out.audio_codes[0]):
                seg = self._segment(exp[f"{run}.audio{k}.audios_sequences"][0])
                if codes.shape != seg.shape:
                    return math.inf, f"{run} segment {k}: {tuple(codes.shape)} frames vs {tuple(seg.shape)}"
                mismatches += _mismatches(codes, seg)
            runs.append(run)
        return (mismatches, ",".join(runs)) if runs else (math.inf, "no run")


# name -> (expected file, runner returning {stage: (error, detail)})
def _stage_table(ctx: ParityContext) -> list[tuple[str, str, Callable[[], dict]]]:
    def single(name, fn):
        return lambda: {name: fn()}

    table = [
        ("features", "frontend", single("features", ctx.features)),
        ("resample", "frontend", single("resample", ctx.resample)),
        ("encoder,bridge,codes", "audio_tokenizer", ctx.encoder_bridge_codes),
        ("llm_logits,llm_hidden", "llm", ctx.llm),
        ("audio_head", "audio_head", single("audio_head", ctx.audio_head)),
    ]
    table += _generation_stages(ctx)
    table += [
        ("decoder_hidden,prenet_mu,flow_mel", "decode", ctx.decode),
        ("vocoder", "vocoder", single("vocoder", ctx.vocoder)),
    ]
    return table


def _generation_stages(ctx: ParityContext) -> list[tuple[str, str, Callable[[], dict]]]:
    return [
        ("generate_text", "generate_text", lambda: {"generate_text": ctx.generate_text()}),
        ("generate_audio", "generate_audio", lambda: {"generate_audio": ctx.generate_audio()}),
        ("s2s", "s2s", lambda: {"s2s": ctx.s2s()}),
    ]


def run_parity(
    fixture_dir: str | Path,
    stages: list[str] | None = None,
    threads: int | None = 1,
    attn_implementation: str = "sdpa",
    out=None,
) -> ParityReport:
    """Run the stages (all by default) on ``fixture_dir``; print the table and the JSON summary to ``out``."""
    out = out or sys.stdout
    if threads:
        torch.set_num_threads(threads)
    fixture = ReferenceFixture(fixture_dir)
    ctx = ParityContext(fixture, attn_implementation=attn_implementation)
    report = ParityReport()
    print(f"{'stage':<16} {'max abs error':>14} {'tolerance':>10}  result  detail", file=out)
    for names, expected_file, runner in _stage_table(ctx):
        wanted = names.split(",")
        if stages and not set(wanted) & set(stages):
            continue
        t0 = time.perf_counter()
        if not fixture.has_stage(expected_file):
            results = {n: (math.inf, f"missing expected/{expected_file}.safetensors") for n in wanted}
        else:
            try:
                results = runner()
            except Exception as exc:  # a stage that cannot run fails, with its reason
                detail = f"error: {type(exc).__name__}: {exc}"
                if "--debug" in sys.argv:
                    traceback.print_exc()
                results = {n: (math.inf, detail) for n in wanted}
        elapsed = time.perf_counter() - t0
        for name in wanted:
            if stages and name not in stages:
                continue
            error, detail = results[name]
            res = StageResult(name, float(error), float(TOLERANCES[name]), detail)
            report.results.append(res)
            verdict = "PASS" if res.passed else "FAIL"
            print(
                f"{name:<16} {error:>14.3g} {res.tolerance:>10.3g}  {verdict:<6}  {detail} ({elapsed:.1f}s)", file=out
            )
    print(json.dumps(report.summary()), file=out)
    return report


__all__ = ["run_parity", "ParityReport", "StageResult", "ParityContext", "TOLERANCES"]
