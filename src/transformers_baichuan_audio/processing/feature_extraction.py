"""Audio front end of Baichuan-Audio: waveform -> 30 s pieces -> variable-length 128-bin Whisper log-mel.

What the original (``OmniAudioProcessor`` / ``OmniMMProcessor._get_audio``) does, reproduced here:

1. load as float32 (int16 / 32768), resample to 16 kHz with a Hann-windowed sinc filter (torchaudio's
   ``resample(..., lowpass_filter_width=128)``, re-implemented in :func:`resample`), average the channels;
2. split clips longer than ``max_audio_seconds`` into non-overlapping pieces (:func:`split_waveform`); pieces shorter
   than ``n_fft`` samples are dropped, and so are pieces too short to give one code frame (``bridge_length == 0``);
3. per piece: zero-pad to 30 s, Whisper log-mel (:meth:`BaichuanAudioFeatureExtractor.whisper_log_mel`: STFT
   n_fft 400 / hop 160 / Hann, last frame dropped, power, 128 Slaney mel filters, ``log10(max(x, 1e-10))``, floor at
   ``max - 8``, ``(x + 4) / 4``), then truncate to ``valid = min(3000, samples // 160 + 1)`` frames;
4. lengths: ``encoder_length = (valid - 1) // 2 + 1`` (conv stem), ``bridge_length = encoder_length // 4`` (= number of
   ``<audio_pad>`` tokens and of code frames; 12.5 Hz).

Input conventions of :class:`BaichuanAudioFeatureExtractor` (documented choices where the original has none):

* a clip is a numpy array or torch tensor, 1-D ``(samples,)`` or 2-D multi-channel. A 2-D clip is read as
  ``(channels, samples)`` (torchaudio layout) when ``shape[0] <= shape[1]``, otherwise as ``(samples, channels)``
  (soundfile layout). All channels are averaged; unlike the original (which asserts at most 2 channels) more than 2
  channels are accepted and averaged too.
* dtypes: float16/32/64 are used as they are (cast to float32); integer PCM is scaled to [-1, 1): int16 / 2**15,
  int32 / 2**31, uint8 (x - 128) / 128 (what torchaudio's ``normalize=True`` does). Any other dtype raises TypeError.
* empty clips, NaN/inf samples, clips that are empty after resampling and clips too short for one code frame
  (< 960 samples at 16 kHz with the released settings) raise ValueError.
* a list/tuple of clips is a batch; every piece of every clip becomes one row of ``input_features``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.whisper.feature_extraction_whisper import WhisperFeatureExtractor

# ----------------------------------------------------------------------------------------------- length formulas


def max_mel_frames(sampling_rate: int = 16000, max_audio_seconds: int = 30, hop_length: int = 160) -> int:
    """Mel frames of one full piece (3000 for 30 s at 16 kHz / hop 160)."""
    return max_audio_seconds * sampling_rate // hop_length


def mel_frames(num_samples: int, sampling_rate: int = 16000, max_audio_seconds: int = 30, hop_length: int = 160) -> int:
    """Valid mel frames of a piece of ``num_samples`` samples: ``min(3000, num_samples // 160 + 1)``."""
    return min(max_mel_frames(sampling_rate, max_audio_seconds, hop_length), num_samples // hop_length + 1)


def encoder_length(mel_frames: int, kernel_size: int = 3, stride_size: int = 2) -> int:
    """Encoder frames after the conv stem (conv1 stride 1, conv2 stride ``stride_size``, both padded ``k // 2``).

    ``(mel_frames - 1) // 2 + 1`` with the released settings. Works on ints and integer tensors.
    """
    change = 2 * (kernel_size // 2) - kernel_size  # padding minus kernel size (-1 for k=3, pad=1)
    length = (mel_frames + change) // 1 + 1
    return (length + change) // stride_size + 1


def bridge_length(encoder_length: int, avg_pooler: int = 4) -> int:
    """Code frames (= ``<audio_pad>`` tokens) of a piece: ``encoder_length // avg_pooler`` (trailing partial group
    dropped). Works on ints and integer tensors."""
    return encoder_length // avg_pooler


def split_lengths(
    num_samples: int,
    sampling_rate: int = 16000,
    max_audio_seconds: int = 30,
    overlap: float = 0.0,
    min_samples: int = 400,
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of the pieces of a clip (the original ``split_with_overlap``).

    Clips up to ``max_audio_seconds`` (or any clip when ``overlap < 0``) are one piece. Longer clips are cut into
    ``max_audio_seconds`` pieces, each starting ``overlap`` seconds before the end of the previous one. Pieces shorter
    than ``min_samples`` (``n_fft``: at least one STFT frame) are dropped.
    """
    max_samples = max_audio_seconds * sampling_rate
    if num_samples <= max_samples or overlap < 0:
        return [(0, num_samples)] if num_samples >= min_samples else []
    step_back = int(sampling_rate * overlap)
    ranges, start = [], 0
    while start < num_samples:
        if start > step_back:
            start -= step_back
        end = min(start + max_samples, num_samples)
        if end - start >= min_samples:
            ranges.append((start, end))
        start = end
    return ranges


def split_waveform(
    wav: np.ndarray,
    sampling_rate: int = 16000,
    max_audio_seconds: int = 30,
    overlap: float = 0.0,
    min_samples: int = 400,
) -> list[np.ndarray]:
    """Split a mono waveform (..., samples) into the original's pieces (see :func:`split_lengths`); views, no copy."""
    ranges = split_lengths(wav.shape[-1], sampling_rate, max_audio_seconds, overlap, min_samples)
    return [wav[..., start:end] for start, end in ranges]


def piece_layout(
    num_samples: int,
    sampling_rate: int = 16000,
    max_audio_seconds: int = 30,
    overlap: float = 0.0,
    hop_length: int = 160,
    n_fft: int = 400,
    kernel_size: int = 3,
    stride_size: int = 2,
    avg_pooler: int = 4,
) -> list[tuple[int, int, int, int, int]]:
    """``(start, end, mel_frames, encoder_length, bridge_length)`` of every piece of a clip of ``num_samples``
    samples at the model rate (pieces with ``bridge_length == 0`` included: the extractor drops them, as the
    original does)."""
    layout = []
    for start, end in split_lengths(num_samples, sampling_rate, max_audio_seconds, overlap, n_fft):
        frames = mel_frames(end - start, sampling_rate, max_audio_seconds, hop_length)
        enc = encoder_length(frames, kernel_size, stride_size)
        layout.append((start, end, frames, enc, bridge_length(enc, avg_pooler)))
    return layout


def num_audio_frames(num_samples: int, **layout_kwargs) -> int:
    """Code frames of a whole clip of ``num_samples`` samples at the model rate (i.e. after resampling): the sum of
    its pieces' bridge lengths = the number of ``<audio_pad>`` tokens to emit. ``layout_kwargs``: the keyword
    arguments of :func:`piece_layout` (defaults = the released model)."""
    return sum(piece[4] for piece in piece_layout(num_samples, **layout_kwargs))


# ---------------------------------------------------------------------------------------------------- resampling


def resampled_length(num_samples: int, orig_freq: int, new_freq: int) -> int:
    """Output length of :func:`resample`: ``ceil(num_samples * new / orig)`` (with the gcd-reduced rates)."""
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    return -(-num_samples * new // orig)


def _sinc_filter_bank(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase bank (new, 1, taps) of Hann-windowed sinc low-pass filters for gcd-reduced rates ``orig -> new``.

    Output phase ``p`` (output sample ``m * new + p``) reads input samples ``m * orig + k`` for
    ``k in [-half, half + orig)``; its tap for ``k`` is the ideal low-pass impulse response at the time offset
    ``k / orig - p / new`` (in units of 1 / gcd seconds), cut off at ``rolloff * min(orig, new) / 2`` and tapered by a
    Hann window spanning ``lowpass_filter_width`` zero crossings on either side.
    """
    cutoff = min(orig, new) * rolloff
    half = math.ceil(lowpass_filter_width * orig / cutoff)
    offsets = torch.arange(-half, half + orig, dtype=dtype) / orig  # input sample offsets
    phases = torch.arange(0, new, dtype=dtype) / new  # output sample phases
    # time offset in units of zero crossings of the low-pass, clipped to the window support
    x = ((offsets[None, :] - phases[:, None]) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(x * (math.pi / (2 * lowpass_filter_width))) ** 2
    bank = torch.sinc(x) * window * (cutoff / orig)  # sinc(x) = sin(pi x) / (pi x), 1 at 0
    return bank[:, None, :], half


def resample(
    waveform: torch.Tensor | np.ndarray,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 128,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Band-limited resampling along the last axis with a Hann-windowed sinc filter.

    Same algorithm and defaults as the original's ``torchaudio.functional.resample(w, orig, new,
    lowpass_filter_width=128)`` (``resampling_method="sinc_interp_hann"``, ``rolloff=0.99``), written here without
    torchaudio: the rates are reduced by their gcd, a polyphase filter bank (one filter per output phase) is applied
    as a strided ``conv1d`` on the zero-padded signal, and the output is cut to ``ceil(len * new / orig)`` samples.
    The filters are computed in the waveform's dtype (float32 for float32 input), as the original does.
    """
    wav = torch.as_tensor(waveform)
    if not wav.is_floating_point():
        raise TypeError(f"resample expects a floating point waveform, got {wav.dtype}")
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wav.clone()
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    bank, half = _sinc_filter_bank(orig, new, lowpass_filter_width, rolloff, wav.dtype)
    lead_shape, length = wav.shape[:-1], wav.shape[-1]
    flat = wav.reshape(-1, 1, length)
    padded = torch.nn.functional.pad(flat, (half, half + orig))
    out = torch.nn.functional.conv1d(padded, bank.to(wav.device), stride=orig)  # (n, new, blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)[:, : resampled_length(length, orig, new)]
    return out.reshape(*lead_shape, out.shape[-1])


# -------------------------------------------------------------------------------------------- input validation

_INT_SCALES = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def _to_float_mono_array(clip) -> tuple[np.ndarray, int]:
    """Validate one clip and return ``(float32 array (channels, samples), channels)``; see the module docstring."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu()
        if clip.dtype == torch.bfloat16:
            clip = clip.float()
        clip = clip.numpy()
    if isinstance(clip, (list, tuple)):
        clip = np.asarray(clip)
    if not isinstance(clip, np.ndarray):
        raise TypeError(f"audio clips must be numpy arrays or torch tensors, got {type(clip).__name__}")
    if clip.ndim not in (1, 2):
        raise ValueError(f"an audio clip must be 1-D (samples,) or 2-D (channels, samples), got shape {clip.shape}")
    if clip.size == 0:
        raise ValueError(f"empty audio clip (shape {clip.shape})")
    dtype = clip.dtype
    if dtype in _INT_SCALES:
        data = clip.astype(np.float32) / np.float32(_INT_SCALES[dtype])
    elif dtype == np.uint8:
        data = (clip.astype(np.float32) - 128.0) / 128.0
    elif dtype in (np.float16, np.float32, np.float64):
        data = clip.astype(np.float32, copy=False)
    else:
        raise TypeError(f"unsupported audio dtype {dtype}: use float16/32/64 in [-1, 1] or int16/int32/uint8 PCM")
    if not np.isfinite(data).all():
        raise ValueError("audio clip contains NaN or infinite samples")
    if data.ndim == 1:
        data = data[None, :]
    elif data.shape[0] > data.shape[1]:  # (samples, channels) as soundfile returns it
        data = data.T
    return np.ascontiguousarray(data), data.shape[0]


# ----------------------------------------------------------------------------------------- feature extractor


class BaichuanAudioFeatureExtractor(WhisperFeatureExtractor):
    r"""Baichuan-Audio front end: raw audio -> variable-length 128-bin log-mel pieces + their lengths.

    A :class:`~transformers.WhisperFeatureExtractor` (``feature_size=128``) whose ``__call__`` reproduces the
    original's splitting, per-piece 30 s padding, truncation to the valid frames, batching by right zero padding, and
    length formulas. The log-mel itself is Whisper's torch implementation (the original's numbers).

    Args:
        feature_size: mel bins (128).
        sampling_rate: model sampling rate (16000); other rates are resampled by :func:`resample`.
        hop_length / n_fft: STFT hop and size.
        max_audio_seconds: piece length in seconds (30); also the padding length of each piece's STFT.
        split_overlap: overlap of consecutive pieces in seconds (0.0 in the released model).
        kernel_size / stride_size / avg_pooler: the encoder conv stem and bridge sizes, for the length formulas.
        resample_lowpass_filter_width / resample_rolloff: parameters of the resampling filter.
    """

    model_input_names = ["input_features", "encoder_length", "bridge_length"]

    def __init__(
        self,
        feature_size: int = 128,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        n_fft: int = 400,
        max_audio_seconds: int = 30,
        split_overlap: float = 0.0,
        kernel_size: int = 3,
        stride_size: int = 2,
        avg_pooler: int = 4,
        resample_lowpass_filter_width: int = 128,
        resample_rolloff: float = 0.99,
        padding_value: float = 0.0,
        **kwargs,
    ):
        kwargs.pop("chunk_length", None)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            hop_length=hop_length,
            chunk_length=max_audio_seconds,
            n_fft=n_fft,
            padding_value=padding_value,
            **kwargs,
        )
        self.max_audio_seconds = max_audio_seconds
        self.split_overlap = split_overlap
        self.kernel_size = kernel_size
        self.stride_size = stride_size
        self.avg_pooler = avg_pooler
        self.resample_lowpass_filter_width = resample_lowpass_filter_width
        self.resample_rolloff = resample_rolloff
        # The original's filters reach sampling_rate / 2 (Whisper hard-codes 8000: the same at 16 kHz).
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=feature_size,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2.0,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )

    @classmethod
    def from_tokenizer_config(cls, config, **kwargs) -> BaichuanAudioFeatureExtractor:
        """Build from a :class:`BaichuanAudioTokenizerConfig` (or any object with the same field names)."""
        fields = dict(
            feature_size=config.num_mel_bins,
            sampling_rate=config.sampling_rate,
            hop_length=config.hop_length,
            n_fft=config.n_fft,
            max_audio_seconds=config.max_audio_seconds,
            split_overlap=config.split_overlap,
            kernel_size=config.kernel_size,
            stride_size=config.stride_size,
            avg_pooler=config.avg_pooler,
        )
        fields.update(kwargs)
        return cls(**fields)

    # ------------------------------------------------------------------------------------------- lengths
    def piece_layout(self, num_samples: int) -> list[tuple[int, int, int, int, int]]:
        """:func:`piece_layout` with this extractor's settings, for ``num_samples`` samples at the model rate."""
        return piece_layout(
            num_samples,
            self.sampling_rate,
            self.max_audio_seconds,
            self.split_overlap,
            self.hop_length,
            self.n_fft,
            self.kernel_size,
            self.stride_size,
            self.avg_pooler,
        )

    def num_audio_frames(self, num_samples: int, sampling_rate: int | None = None) -> int:
        """Number of ``<audio_pad>`` tokens (code frames) of a clip of ``num_samples`` samples at ``sampling_rate``
        (default: the model rate; other rates are converted with the resampler's output length)."""
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            num_samples = resampled_length(num_samples, sampling_rate, self.sampling_rate)
        return sum(piece[4] for piece in self.piece_layout(num_samples))

    # ------------------------------------------------------------------------------------------ waveform
    def prepare_waveform(self, clip, sampling_rate: int) -> np.ndarray:
        """Validate one clip, resample it to the model rate and average its channels -> float32 (samples,)."""
        data, channels = _to_float_mono_array(clip)
        if sampling_rate != self.sampling_rate:
            # the original resamples every channel, then averages (both linear: the order only changes roundoff)
            data = resample(
                torch.from_numpy(data),
                sampling_rate,
                self.sampling_rate,
                lowpass_filter_width=self.resample_lowpass_filter_width,
                rolloff=self.resample_rolloff,
            ).numpy()
            if data.shape[-1] == 0:
                raise ValueError("audio clip is empty after resampling")
        if channels > 1:
            data = data.mean(axis=0, dtype=np.float32)
        else:
            data = data[0]
        return np.ascontiguousarray(data, dtype=np.float32)

    def log_mel(self, pieces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-mel (feature_size, valid_frames) of each piece, as the original computes it: the piece is zero-padded
        (or cut) to ``max_audio_seconds``, Whisper's log-mel runs on it (global max-8 floor over the padded piece),
        and the result is truncated to ``min(max_frames, samples // hop + 1)`` frames."""
        n = self.max_audio_seconds * self.sampling_rate
        out = []
        for piece in pieces:
            padded = np.zeros((1, n), dtype=np.float32)
            m = min(n, piece.shape[-1])
            padded[0, :m] = piece[:m]
            spec = self.whisper_log_mel(torch.from_numpy(padded))[0].numpy()
            frames = mel_frames(piece.shape[-1], self.sampling_rate, self.max_audio_seconds, self.hop_length)
            out.append(np.ascontiguousarray(spec[:, :frames]))
        return out

    def whisper_log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel of a (batch, samples) float32 waveform -> (batch, feature_size, samples // hop): power
        STFT (Hann window, centred, last frame dropped), mel filters, log10 floored at 1e-10, per-row floor at the
        maximum - 8, then ``(x + 4) / 4`` (the computation of ``WhisperFeatureExtractor``'s torch path, on public
        torch calls)."""
        waveform = waveform.to(torch.float32)
        if self.dither != 0.0:
            waveform = waveform + self.dither * torch.randn(waveform.shape, dtype=waveform.dtype)
        window = torch.hann_window(self.n_fft, device=waveform.device)
        stft = torch.stft(waveform, self.n_fft, self.hop_length, window=window, return_complex=True)
        magnitudes = (stft[..., :-1].abs() ** 2).contiguous()
        mel_filters = torch.from_numpy(self.mel_filters).to(waveform.device, torch.float32)
        log_spec = torch.clamp(mel_filters.T @ magnitudes, min=1e-10).log10()
        max_val = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, max_val - 8.0) + 4.0) / 4.0

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch of clips.

        Args:
            raw_speech: one clip (np.ndarray / torch.Tensor, 1-D or 2-D multi-channel) or a list of clips.
            sampling_rate: sampling rate of ``raw_speech`` (required; resampled to ``self.sampling_rate`` if
                different).
            return_tensors: ``"pt"`` (default), ``"np"`` or None (lists).

        Returns:
            :class:`~transformers.BatchFeature` with
            - ``input_features`` (n_pieces, feature_size, T_max) float32: pieces of all clips in order, right-padded
              with zeros to the longest piece (the original's collation);
            - ``feature_length`` (n_pieces,): valid mel frames per piece;
            - ``encoder_length`` (n_pieces,), ``bridge_length`` (n_pieces,): the length formulas;
            - ``audio_pieces`` (n_clips,): pieces per clip (to regroup pieces into clips).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if sampling_rate is None:
            raise ValueError(
                f"`sampling_rate` is required (the model expects {self.sampling_rate} Hz; other rates are resampled)"
            )
        is_batch = isinstance(raw_speech, (list, tuple)) and not (
            len(raw_speech) > 0 and all(np.isscalar(x) for x in raw_speech)
        )
        clips = list(raw_speech) if is_batch else [raw_speech]
        if not clips:
            raise ValueError("no audio clips given")
        pieces, clip_pieces, lengths = [], [], []
        for i, clip in enumerate(clips):
            wav = self.prepare_waveform(clip, sampling_rate)
            kept = 0
            for start, end, frames, enc, bri in self.piece_layout(wav.shape[-1]):
                if bri <= 0:  # the original skips pieces without a code frame
                    continue
                pieces.append(wav[start:end])
                lengths.append((frames, enc, bri))
                kept += 1
            if kept == 0:
                raise ValueError(
                    f"audio clip {i} is too short: {wav.shape[-1]} samples at {self.sampling_rate} Hz give no code "
                    f"frame (at least {self._min_samples()} samples are needed)"
                )
            clip_pieces.append(kept)
        mels = self.log_mel(pieces)
        t_max = max(m.shape[-1] for m in mels)
        features = np.full((len(mels), self.feature_size, t_max), self.padding_value, dtype=np.float32)
        for j, mel in enumerate(mels):
            features[j, :, : mel.shape[-1]] = mel
        data = {
            "input_features": features,
            "feature_length": np.array([f for f, _, _ in lengths], dtype=np.int64),
            "encoder_length": np.array([e for _, e, _ in lengths], dtype=np.int64),
            "bridge_length": np.array([b for _, _, b in lengths], dtype=np.int64),
            "audio_pieces": np.array(clip_pieces, dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _min_samples(self) -> int:
        """Smallest clip (samples at the model rate) that yields one code frame (960 with the released settings)."""
        n = self.n_fft
        while self.num_audio_frames(n) < 1:
            n += 1  # only on the error path
        return n


__all__ = [
    "BaichuanAudioFeatureExtractor",
    "bridge_length",
    "encoder_length",
    "max_mel_frames",
    "mel_frames",
    "num_audio_frames",
    "piece_layout",
    "resample",
    "resampled_length",
    "split_lengths",
    "split_waveform",
]
