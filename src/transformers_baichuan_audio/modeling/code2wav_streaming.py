"""Streaming code2wav: push code frames of one phrase as they are generated, get 24 kHz waveform chunks back.

What is exact and what is not:

* dequantizer, transposed conv, causal layers, prenet: causal, exact;
* GroupNorm of dconv1: its statistics are over the WHOLE phrase, so no streaming decoder can match the one-shot
  decode before the phrase ends. The streaming decoder normalises each prefix with the statistics of that prefix
  (running statistics; the last chunk uses the whole phrase, i.e. the one-shot statistics), or with statistics
  given by the caller (``norm_stats``; with the one-shot statistics every chunk's mel equals the one-shot mel);
* U-Net: causal convs and attention within ``static_chunk_size`` (100-frame, 2 s) chunks with every earlier chunk
  visible, so a chunk's mel is final once its 100 frames' inputs exist: the mel is produced chunk by chunk
  (25 code frames per chunk), each chunk from a decode of the whole prefix (exact for the chunk);
* vocoder: not causal (about ``receptive_field_frames`` mel frames each side) and its NSF phase is a running sum
  over all samples. The stream carries the phase sum exactly and re-runs the vocoder on windows with that much
  context on both sides, so the concatenated chunks equal the one-shot waveform up to float roundoff (no
  cross-fade is needed); the price is a lookahead of ``receptive_field_frames`` (exact, from the layers: 15 for the
  released vocoder) + 5 (F0 predictor) mel frames.
* when a chunk is decoded: the first U-Net chunk as soon as its 25th frame arrives (the first sound first), every
  later one when the frame after it arrives (80 ms of speech later), i.e. knowing whether the phrase goes on (if it
  does, the chunk's last mel frame exists: the transposed conv's bias-only frame, inside the chunk's attention; if
  not, ``finish`` decodes the chunk as the phrase's end), so no later chunk is decoded twice. (With a larger
  ``chunk_frames``, when the schedule returns a chunk: the chunks completed by then, in one pass.) Only a phrase of
  exactly 25 frames has its chunk computed assuming the phrase goes on; at ``finish`` that chunk is decoded again as
  the end: the frames not yet vocoded take the exact values, those already vocoded keep the assumption (~1e-2 mel
  difference).

Two paths (``incremental=``):

* incremental (default where :meth:`BaichuanAudioStreamingDecoder.supports_incremental`: one-level U-Net, prenet
  length ratio 1, chunk a whole number of frames; the released model and the tiny config): each chunk is decoded
  from the causal state of the earlier ones (:class:`~.streaming_state.StreamingCache`): the transposed conv's
  ``(k - 1) // stride`` left frames (0 for k=3, stride 4), the running GroupNorm sums, the keys / values of every
  decoder and prenet layer, and per Euler step the U-Net's causal-conv left context (2 frames per conv) and the keys /
  values of every U-Net attention layer (a chunk attends to all of itself and every earlier chunk, as the static
  chunk mask says). With caller-given statistics this equals the reference path to fp32 roundoff (measured 4.8e-7
  mel, one ulp). With running statistics it does not: the state of earlier chunks keeps the statistics those chunks
  had (the reference re-normalises the whole prefix each time), so the error does not shrink towards the phrase's
  end: on tiny-a, 0.129, 0.136, 0.103, 0.102, 0.091 per 2 s chunk (reference path: 0.129 ... 0), i.e. bounded by the
  first chunk's error. Cost per chunk: constant except attention over all earlier frames (grows with the phrase,
  as the model's attention does; keys / values kept in buffers with room for ``reserve_frames``, doubling past
  it); the vocoder windows are bounded.
  Memory: keys / values of every attention layer, for the U-Net per Euler step and for both CFG halves; with a
  ``state_pool`` (:class:`~.streaming_state.StreamingStatePool`, one per turn in the streamer and the chat engine)
  a finished phrase's buffers serve the next phrase, whose state writes then go to pages already mapped.
  Bounded context (``flow_matching_config.num_decoding_left_chunks = n >= 0``, default -1 = every earlier chunk):
  a U-Net chunk attends to the ``n`` chunks before it only, and the stream keeps only their keys / values, so the
  cost and memory per chunk no longer grow with the phrase. The one-shot decode applies the same mask, so the
  stream still equals it (as above); neither equals the original's mel past the first ``n + 1`` chunks
  (``benchmarks/bench_code2wav_streaming.py --left-chunks`` measures by how much and how fast).
* reference (``incremental=False``): each chunk re-decodes the whole prefix (quadratic in the phrase length, ~3x a
  one-shot decode for 10 s), and the last chunk is exact with running statistics.

Chunk schedule (``first_chunk_frames``, ``chunk_frames``; the total length is always the one-shot decode's,
``(4 * frames - 1) * 480`` samples: nothing is inserted, and no cross-fade is needed inside a phrase since the vocoder
windows overlap by exactly its receptive field, ``lookahead_frames`` = 15 + 5 mel frames):

* default: a chunk per U-Net chunk, the first when its 25th code frame arrives (the earliest its mel is exact),
  each later one when the frame after its 25th arrives (see above). The first chunk holds 100 - 20 = 80 mel frames
  (1.6 s), each later one 100 (2 s), the rest comes at :meth:`finish`;
* ``chunk_frames`` (a multiple of 25): a later chunk every ``chunk_frames`` frames counted from the first exact chunk
  (25 frames, or ``first_chunk_frames`` when larger; after a provisional first chunk that exact chunk comes first,
  when it completes), each one frame past its last frame, so every later pass holds ``chunk_frames`` frames (fewer,
  larger vocoder windows, and the U-Net chunks completed since the last returned chunk decoded in one pass: larger
  products, which a CPU runs faster than chunk-sized ones; each chunk's decoder / prenet state, GroupNorm statistics
  and attention are still its own, so the samples are the default's up to roundoff; the reference path still
  decodes per chunk);
* ``first_chunk_frames`` < 25 (at least ``min_first_chunk_frames`` = 6, the first with a sample past the lookahead):
  a provisional first chunk, decoded as if the U-Net chunk ended there (its ``4 n - 20`` mel frames are vocoded and
  kept; the causal state is not), then the regular schedule. Only the provisional frames differ from the default
  stream; every later mel frame is the default's bit for bit (the state comes from the exact first chunk). Measured
  on tiny-a (original weights, 2 Euler steps, a 60-frame random phrase, |mel| max 5.15): max mel error of the
  vocoded provisional frames against the default stream 0.79 / 0.84 / 0.73 / 0.65 / 0.42 / 0.31 for 6 / 8 / 10 /
  12 / 16 / 20 frames (earlier, on another phrase and with the former 31-frame lookahead: 0.70 / 0.71 / 0.57 / 0.62
  / 0.57 for 8 ... 20 frames; the default first chunk's running-statistics error is 0.13).
  The waveform after it is not sample-comparable (the NSF phase is a running sum of f0 from the start).
  Default off: an earlier first sound (after 6 frames = 0.48 s of generated speech instead of 2 s) for approximate
  provisional frames (0.08 s of sound at 6 frames, 1.52 s at 24).

Measured on the tiny-a fixture (10 s, tests/test_code2wav_streaming.py), reference path: with the phrase statistics
the mel equals the one-shot mel to 3e-6 and the windowed vocoder adds 4e-5; with running statistics the mel differs
by 0.13 (2 % of its range) in the first 2 s chunk, 0.066 / 0.036 / 0.0035 in the next ones and 0 in the last one.
Speed: benchmarks/bench_code2wav_streaming.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configuration import is_int_at_least
from .code2wav import BaichuanAudioCode2Wav
from .flow_matching import euler_cfm_sample
from .generation import SPEECH_GENERATION_DEFAULTS
from .layers import build_attention_mask
from .streaming_state import StreamingCache, StreamingStatePool
from .vocoder import NSFSourceDraws

#: Code frames a streaming decoder on a CPU gives its attention state room for (generation's default
#: ``audio_max_frames``, 40 s of speech). Growing the state past its room copies it into freshly mapped pages all at
#: once, which on the project's 2-core VM stalled a chunk by 6 s at 14 s and by 12 s at 30 s of phrase (issue 18).
DEFAULT_RESERVE_FRAMES: int = SPEECH_GENERATION_DEFAULTS["audio_max_frames"]


class BaichuanAudioStreamingDecoder:
    """Incremental decoding of one phrase: :meth:`push` code frames as they are generated, get waveform chunks back;
    :meth:`finish` at the end of the phrase returns the rest. See the module docstring for what is exact.

    The mel is produced per U-Net attention chunk (``static_chunk_size`` mel frames = ``static_chunk_size /
    avg_pooler`` code frames, 25 in the released model), so by default the first waveform chunk is returned by the
    push that completes the first 25 frames, each later one by the push of the frame after a chunk's 25th;
    ``first_chunk_frames`` / ``chunk_frames`` change the schedule (module docstring). The vocoder emits the samples whose mel context is complete.

    Args:
        model: a :class:`BaichuanAudioCode2Wav`.
        noise: CFM noise (1, n_mels, T) covering the phrase (sliced as the phrase grows); drawn per chunk from
            ``generator`` when None (then not the same numbers as a one-shot ``decode`` with that generator).
        generator: RNG for the noise and the NSF draws.
        draws: NSF draws covering the phrase (phase (1, H+1, 1), noise (1, H+1, samples)); drawn when None.
        norm_stats: dconv1 GroupNorm (mean, var) (each shape (1,)) to use for every chunk; None: running statistics.
        num_steps: Euler steps.
        incremental: True: each chunk is decoded from the causal state of the earlier ones (linear time); False:
            each chunk re-decodes the whole prefix (the reference path, quadratic); None (default): incremental when
            the model allows it (:meth:`supports_incremental`).
        first_chunk_frames: code frames after which the first waveform chunk is returned (the chunk schedule, see
            the module docstring). None (default): :attr:`frames_per_chunk` (25), the first exact chunk. Smaller
            (at least :attr:`min_first_chunk_frames`, 6): a provisional first chunk, decoded as if the U-Net chunk
            ended there. Larger: a multiple of :attr:`frames_per_chunk`.
        chunk_frames: code frames per later chunk: a multiple of :attr:`frames_per_chunk` (default: one), counted
            from the first exact chunk; each later chunk is returned one frame past its last frame and decoded in one
            U-Net pass (more work per pass, less time per frame; the module docstring).
        reserve_frames: code frames of the phrase the attention state is given room for at once (longer phrases
            still work: the room doubles). None (default): :data:`DEFAULT_RESERVE_FRAMES` (the default per-phrase cap
            of generation) on a CPU, where room costs address space only, and 0 (grow as needed) elsewhere.
        state_pool: a :class:`~.streaming_state.StreamingStatePool` the attention state buffers are taken from and
            given back to at :meth:`finish` (so the next phrase of the turn reuses pages already mapped: measured
            1.10x instead of 1.31x of the one-shot decode time for a 16 s phrase at real size on the project's
            2-core CPU). None (default): fresh buffers, freed with the decoder.
    """

    def __init__(
        self,
        model: BaichuanAudioCode2Wav,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: NSFSourceDraws | None = None,
        norm_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_steps: int | None = None,
        incremental: bool | None = None,
        first_chunk_frames: int | None = None,
        chunk_frames: int | None = None,
        reserve_frames: int | None = None,
        state_pool: StreamingStatePool | None = None,
    ):
        self.model = model
        cfg = model.config
        self.chunk = cfg.flow_matching_config.static_chunk_size
        self.stride = model.decoder.dconv1.conv.stride[0]
        self.noise = noise
        self.generator = generator
        self.norm_stats = norm_stats
        self.num_steps = num_steps
        vocoder = model.vocoder
        self.hop = vocoder.upsample_factor
        self.harmonics = vocoder.m_source.num_harmonics
        self.f0_radius = sum(1 for m in vocoder.f0_predictor.condnet if isinstance(m, nn.Conv1d))
        self.voc_radius = vocoder.receptive_field_frames()
        if draws is None:
            draws = NSFSourceDraws.sample(1, self.harmonics, 0, generator, model.device)
        self.draws = draws
        self._noise_pieces = [draws.noise]
        self.frames: list[torch.Tensor] = []
        self.mel = torch.zeros(1, cfg.flow_matching_config.in_channels, 0, device=model.device)
        self.mel_chunks_done = 0
        self.source = torch.zeros(1, 0, device=model.device)
        self.f0 = torch.zeros(1, 0, device=model.device)
        self.phase_carry = None
        self.emitted_frames = 0
        self.finished = False
        supported = self.supports_incremental(model)
        if incremental and not supported:
            raise ValueError(
                "incremental streaming needs a one-level U-Net, a prenet length ratio of 1 and a static chunk that is "
                "a whole number of code frames; use incremental=False"
            )
        self.incremental = supported if incremental is None else incremental
        if reserve_frames is None:
            reserve_frames = DEFAULT_RESERVE_FRAMES if model.device.type == "cpu" else 0
        if not is_int_at_least(reserve_frames, 0):
            raise ValueError(f"reserve_frames must be an int >= 0, got {reserve_frames!r}")
        if state_pool is not None and not isinstance(state_pool, StreamingStatePool):
            raise TypeError(f"state_pool must be a StreamingStatePool or None, got {type(state_pool).__name__}")
        self.cache = StreamingCache(reserve=reserve_frames * self.stride, pool=state_pool)
        self.cache_before_last_pass, self.chunks_before_last_pass = self.cache, 0
        per_chunk = self.frames_per_chunk
        self.first_chunk_frames = per_chunk if first_chunk_frames is None else first_chunk_frames
        self.chunk_frames = per_chunk if chunk_frames is None else chunk_frames
        first, later = self.first_chunk_frames, self.chunk_frames
        if not is_int_at_least(first, self.min_first_chunk_frames):
            raise ValueError(
                f"first_chunk_frames must be an int >= {self.min_first_chunk_frames} (the vocoder's lookahead is "
                f"{self.voc_radius + self.f0_radius} mel frames), got {first!r}"
            )
        if first > per_chunk and first % per_chunk:
            raise ValueError(f"first_chunk_frames above {per_chunk} must be a multiple of it, got {first}")
        if not is_int_at_least(later, per_chunk) or later % per_chunk:
            raise ValueError(
                f"chunk_frames must be a positive multiple of {per_chunk} (the U-Net chunk), got {later!r}"
            )
        self.chunks_returned, self._returned_at = 0, 0

    @staticmethod
    def supports_incremental(model: BaichuanAudioCode2Wav) -> bool:
        """Whether chunk-by-chunk decoding from carried state is exact for this model's architecture."""
        fm, stride = model.config.flow_matching_config, model.decoder.dconv1.conv.stride[0]
        return (
            model.estimator.streamable
            and fm.prenet_target_mel_length_scale_ratio == 1.0
            and fm.static_chunk_size % stride == 0
        )

    @property
    def frames_per_chunk(self) -> int:
        """Code frames of one U-Net attention chunk (25): the mel is final chunk by chunk."""
        return math.ceil(self.chunk / self.stride)

    @property
    def min_first_chunk_frames(self) -> int:
        """Fewest code frames whose mel gives any sample: more mel frames than the vocoder's lookahead (6)."""
        return (self.voc_radius + self.f0_radius) // self.stride + 1

    @property
    def lookahead_frames(self) -> int:
        """Mel frames at the end of the decoded mel that wait for the next chunk (the vocoder's and F0 predictor's
        right context: 20 = 0.4 s at 24 kHz / 480 for the released vocoder)."""
        return self.voc_radius + self.f0_radius

    def _noise(self, total: int) -> torch.Tensor:
        n_mels = self.model.config.flow_matching_config.in_channels
        if self.noise is not None:
            if self.noise.shape[-1] < total:
                raise ValueError(f"streaming noise covers {self.noise.shape[-1]} mel frames, {total} needed")
            return self.noise.reshape(1, n_mels, -1)[..., :total]
        have = getattr(self, "_drawn_noise", torch.zeros(1, n_mels, 0, device=self.model.device))
        if have.shape[-1] < total:
            extra = torch.randn((1, n_mels, total - have.shape[-1]), generator=self.generator, device=self.model.device)
            have = torch.cat([have, extra * self.model.config.flow_matching_config.temperature], dim=-1)
            self._drawn_noise = have
        return have[..., :total]

    def _prefix_mel(self, num_frames: int, continues: bool) -> torch.Tensor:
        codes = torch.cat(self.frames[:num_frames]) if num_frames else None
        total = (
            num_frames * self.stride
            if continues
            else int(self.model.decoder.dconv1.output_lengths(torch.tensor(num_frames)))
        )
        mel, _, _ = self.model._frames_to_mel(
            [codes], True, self._noise(total), None, self.num_steps, self.norm_stats, continues
        )
        return mel

    def _chunk_mel(self, start: int, stop: int, continues: bool, cache: StreamingCache) -> torch.Tensor:
        """Mel (1, n_mels, T) of frames [start, stop) of the phrase (``start`` on a chunk boundary; one or more
        chunks) from the causal state of the frames before ``start`` in ``cache`` (which receives their state in
        ``cache.new``). The decoder and prenet run chunk by chunk (each chunk's running GroupNorm statistics, as
        chunk-at-a-time passes have them), the U-Net's Euler steps once over all of them (larger products)."""
        model, fm = self.model, self.model.config.flow_matching_config
        bounds = [*range(start, stop, self.frames_per_chunk), stop]
        mu = torch.cat(
            [
                self._chunk_prior(lo, hi, continues or hi < stop, cache)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            ],
            dim=-1,
        )
        a = start * self.stride
        ones = torch.ones(1, 1, mu.shape[-1], device=mu.device, dtype=mu.dtype)
        steps = iter(range(1 << 30))

        def estimator(x, mask, mu, t):  # one call per Euler step: its own conv / attention state
            cache.scope = next(steps)
            return model.estimator(x, mask, mu, t, cache=cache)

        with model.estimator.compute_context(mu.device):
            mel = euler_cfm_sample(
                estimator,
                self._noise(a + mu.shape[-1])[..., a:].to(mu.device, mu.dtype),
                mu,
                ones,
                self.num_steps or fm.diffusion_steps,
                fm.inference_cfg_rate,
                fm.t_scheduler,
            )
        cache.scope = None
        return mel

    def _chunk_prior(self, start: int, stop: int, continues: bool, cache: StreamingCache) -> torch.Tensor:
        """The U-Net condition ``mu`` (1, n_mels, T) of frames [start, stop) (at most one chunk): transposed conv,
        GroupNorm, reconstruction decoder and prenet, from and into the causal state in ``cache``."""
        model, decoder, prenet = self.model, self.model.decoder, self.model.prenet
        dconv = decoder.dconv1
        k, s = dconv.conv.kernel_size[0], dconv.conv.stride[0]
        cache.scope = None
        # transposed conv: frame i reaches positions [s i, s i + k): the (k - 1) // s frames before ``start``
        lo = max(0, start - (k - 1) // s)
        a = start * s
        norm_end = int(dconv.normalized_lengths(torch.tensor(stop), continues))
        out_end = int(dconv.output_lengths(torch.tensor(stop), continues))
        raw = dconv.raw(model.dequantize(torch.cat(self.frames[lo:stop]))[None], continues)
        raw = raw[..., a - s * lo : norm_end - s * lo]
        if self.norm_stats is not None:
            mean, var = self.norm_stats
        else:  # running statistics: sums over every position so far (those of earlier chunks are final)
            v = raw.double()
            sums = cache.latest("groupnorm_sums", torch.zeros(3, dtype=torch.float64, device=v.device))
            sums = sums + torch.stack([v.sum(), v.square().sum(), torch.tensor(float(v.numel()), device=v.device)])
            cache.new["groupnorm_sums"] = sums
            mean = sums[0] / sums[2]
            var = (sums[1] / sums[2] - mean.square()).clamp_min(0)
            mean, var = mean[None], var[None]
        y = dconv.normalize(raw, mean, var)[..., : out_end - a].transpose(1, 2)
        hidden = (y.float() + decoder.positions(out_end)[a:out_end]).to(y.dtype)
        mask = build_attention_mask(None, out_end - a, causal=True, device=hidden.device, past_length=a)
        for layer in decoder.layers:
            hidden = layer(hidden, mask, cache=cache)
        hidden = prenet.in_mlp(decoder.layer_norm(hidden))
        for layer in prenet.layers:
            hidden = layer(hidden, mask, cache=cache)
        return prenet.out_proj(prenet.final_norm(hidden)).transpose(1, 2).float()

    def _mel_from(self, start: int, stop: int, continues: bool, cache: StreamingCache) -> tuple[int, torch.Tensor]:
        """(first mel position p, mel of positions [p, end) of frames [.., stop)): incremental from ``start``, or
        the whole prefix re-decoded (reference path, p = 0)."""
        if self.incremental:
            return start * self.stride, self._chunk_mel(start, stop, continues, cache)
        return 0, self._prefix_mel(stop, continues)

    def _draws_for(self, start: int, stop: int) -> NSFSourceDraws:
        """NSF draws of samples [start, stop): the given ones, then drawn as needed (kept as pieces: no copy of the
        whole history per chunk)."""
        pieces = self._noise_pieces
        have = sum(piece.shape[-1] for piece in pieces)
        if have < stop:
            device = self.draws.noise.device
            pieces.append(torch.randn((1, self.harmonics, stop - have), generator=self.generator, device=device))
        out, offset = [], 0
        for piece in pieces:
            lo, hi = max(start - offset, 0), min(stop - offset, piece.shape[-1])
            if lo < hi:
                out.append(piece[..., lo:hi])
            offset += piece.shape[-1]
        return NSFSourceDraws(self.draws.phase, torch.cat(out, dim=-1))

    def _advance_source(self, final_frames: int) -> None:
        """Extend the NSF excitation up to ``final_frames`` mel frames (those whose f0 no longer changes)."""
        done = self.source.shape[-1] // self.hop
        if final_frames <= done:
            return
        vocoder = self.model.vocoder
        lo, hi = max(0, done - self.f0_radius), min(self.mel.shape[-1], final_frames + self.f0_radius)
        f0 = vocoder.predict_f0(self.mel[..., lo:hi])[:, done - lo : final_frames - lo]
        self.f0 = torch.cat([self.f0, f0], dim=-1)
        draws = self._draws_for(done * self.hop, final_frames * self.hop)
        excitation, self.phase_carry = vocoder.m_source(vocoder.upsample_f0(f0), draws, self.phase_carry)
        self.source = torch.cat([self.source, excitation], dim=-1)

    def _rewind_source(self, frames: int) -> None:
        """Drop the excitation after ``frames`` mel frames (recomputing the running phase sum at that point)."""
        if self.source.shape[-1] <= frames * self.hop:
            return
        self.f0 = self.f0[:, :frames]
        self.source = self.source[:, : frames * self.hop]
        m_source = self.model.vocoder.m_source
        increments = m_source.harmonic_increments(self.model.vocoder.upsample_f0(self.f0)).double()
        self.phase_carry = torch.cumsum(increments, dim=-1)[..., -1] if frames else None

    def _emit(self, upto: int) -> torch.Tensor:
        """Waveform samples of mel frames [emitted, upto) from a vocoder window with full context."""
        start = self.emitted_frames
        if upto <= start:
            return torch.zeros(0, device=self.model.device)
        lo, hi = max(0, start - self.voc_radius), min(self.mel.shape[-1], upto + self.voc_radius)
        wave = self.model.vocoder.decode(self.mel[..., lo:hi], self.source[:, lo * self.hop : hi * self.hop])
        self.emitted_frames = upto
        return wave[0, (start - lo) * self.hop : (upto - lo) * self.hop]

    def _known_frames(self) -> int:
        """Frames whose chunk can be decoded: all of them up to the first U-Net chunk (decoded as soon as it is
        complete: the first sound comes first), after it all but the newest (a later chunk is decoded once the frame
        after it exists, i.e. knowing whether the phrase goes on: no chunk is decoded twice)."""
        n = len(self.frames)
        return n if n <= self.frames_per_chunk else n - 1

    def _due(self) -> bool:
        """Whether the chunk schedule returns a chunk at the current number of frames."""
        known = self._known_frames()
        if self.chunks_returned == 0:
            return known >= self.first_chunk_frames
        # later chunks every chunk_frames frames counted from the first exact chunk (after a provisional one: the
        # first exact chunk itself when it completes), so that each later pass holds chunk_frames frames
        anchor = max(self.first_chunk_frames, self.frames_per_chunk)
        return (known - anchor) // self.chunk_frames > (self._returned_at - anchor) // self.chunk_frames

    def _provisional_mel(self) -> None:
        """Mel of the frames so far, before the first U-Net chunk is complete, decoded as if that chunk ended
        here (attention over the frames that exist; the state is not kept): the provisional first chunk."""
        _, mel = self._mel_from(0, len(self.frames), True, self.cache.branch())
        self.mel = mel[..., : len(self.frames) * self.stride]

    def _decode_complete_chunks(self, known: int) -> None:
        """Decode the U-Net chunks that the first ``known`` frames complete and that are not decoded yet (one with
        the default schedule, several with a larger ``chunk_frames``): incremental, in one pass (larger products,
        the same numbers up to roundoff); the reference path re-decodes the prefix per chunk (each with the running
        statistics of its prefix)."""
        complete = known * self.stride // self.chunk
        while complete > self.mel_chunks_done:
            upto = complete if self.incremental else self.mel_chunks_done + 1
            start = self.mel_chunks_done * self.chunk // self.stride
            cache = self.cache.branch()
            p, mel = self._mel_from(start, math.ceil(upto * self.chunk / self.stride), True, cache)
            self.cache_before_last_pass, self.chunks_before_last_pass = self.cache, self.mel_chunks_done
            self.cache = cache.committed()
            lo, hi = self.mel_chunks_done * self.chunk, upto * self.chunk
            # mel frames already turned into sound (a provisional first chunk) keep the values they were vocoded from
            keep = max(lo, min(self.emitted_frames, self.mel.shape[-1]))
            self.mel = torch.cat([self.mel[..., :keep], mel[..., keep - p : hi - p]], dim=-1)
            self._rewind_source(min(keep, self.source.shape[-1] // self.hop))
            self.mel_chunks_done = upto
            self._advance_source(self.mel.shape[-1] - self.f0_radius)

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Add code frames (n, num_codebooks) (n >= 0; several at once, e.g. a consumer catching up: the chunks
        they complete are decoded in one pass); returns the new waveform samples (maybe empty): a chunk when the
        schedule (``first_chunk_frames``, ``chunk_frames``) says so."""
        if self.finished:
            raise RuntimeError("this streaming decoder is finished; create a new one for the next phrase")
        if codes.dim() == 1:
            codes = codes[None]
        if codes.shape[0]:
            self.frames.extend(self.model.check_codes(codes)[0].split(1))
        if not self._due():
            return torch.zeros(0, device=self.model.device)
        self._decode_complete_chunks(self._known_frames())
        if self.mel_chunks_done == 0:
            self._provisional_mel()
            self._advance_source(self.mel.shape[-1] - self.f0_radius)
        self.chunks_returned += 1
        self._returned_at = self._known_frames()
        upto = min(self.source.shape[-1] // self.hop, self.mel.shape[-1]) - self.voc_radius
        return self._emit(upto)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End of the phrase: decode the remaining frames and return the remaining samples. The carried state is
        dropped (its buffers given back to the ``state_pool``), also when this raises."""
        if self.finished:
            return torch.zeros(0, device=self.model.device)
        self.finished = True
        try:
            return self._finish()
        finally:
            self.close()

    def close(self) -> None:
        """Abandon the phrase (e.g. a stopped turn): drop the carried state without decoding the rest, its buffers
        given back to the ``state_pool``. Afterwards :meth:`finish` returns nothing and :meth:`push` raises."""
        self.finished = True
        self.cache.release()
        self.cache = self.cache_before_last_pass = StreamingCache()

    def _finish(self) -> torch.Tensor:
        if not self.frames:
            raise ValueError("no code frames were pushed: nothing to decode")
        # Those the schedule had not returned yet, except one ending with the phrase: the rest is at most one chunk.
        self._decode_complete_chunks(len(self.frames) - 1)
        total = int(self.model.decoder.dconv1.output_lengths(torch.tensor(len(self.frames))))
        if total != self.mel.shape[-1]:
            # The rest of the phrase; when it ended exactly where the last chunk had assumed a continuation (its
            # length a multiple of the chunk), that chunk again, from the state before it, as the phrase's end.
            redo = total < self.mel_chunks_done * self.chunk
            chunks = self.chunks_before_last_pass if redo else self.mel_chunks_done
            cache = (self.cache_before_last_pass if redo else self.cache).branch()
            p, mel = self._mel_from(chunks * self.chunk // self.stride, len(self.frames), False, cache)
            # Frames not yet turned into sound take the exact values. Only in the boundary case (and after a
            # provisional first chunk) were some frames already vocoded from an assumption; they stay.
            keep = max(chunks * self.chunk, min(self.mel.shape[-1], self.emitted_frames))
            self.mel = torch.cat([self.mel[..., :keep], mel[..., keep - p : total - p]], dim=-1)
            self._rewind_source(min(keep, self.source.shape[-1] // self.hop))
        self._advance_source(total)
        return self._emit(total)


__all__ = ["DEFAULT_RESERVE_FRAMES", "BaichuanAudioStreamingDecoder"]
