"""Configurations of Baichuan-Audio.

One top-level :class:`BaichuanAudioConfig` (``model_type="baichuan_audio"``) composed of:

* ``text_config``: the Qwen2 language model (a stock ``Qwen2Config``),
* ``audio_tokenizer_config``: :class:`BaichuanAudioTokenizerConfig` (Whisper-style encoder, 4x gated-conv bridge,
  8-stage residual VQ),
* ``audio_head_config``: :class:`BaichuanAudioHeadConfig` (the 3-layer depth transformer over the 8 codebooks),
* ``code2wav_config``: :class:`BaichuanAudioCode2WavConfig`, composed of ``decoder_config``
  (:class:`BaichuanAudioReconstructionDecoderConfig`), ``flow_matching_config``
  (:class:`BaichuanAudioFlowMatchingConfig`) and the HiFT vocoder's ``vocoder_config``
  (:class:`BaichuanAudioVocoderConfig`).

Every default is the value of the released Baichuan-Audio 10B model (see ``shared/docs/reference-architecture.md``),
so ``BaichuanAudioConfig()`` describes the real model. :func:`BaichuanAudioConfig.tiny` builds a small config with
the same structure for tests, examples and the offline demo.
"""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

DEFAULT_CODEBOOK_SIZES = [8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024]


def is_int_at_least(value, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) >= ``minimum`` (the check of integer settings and arguments)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_codebooks(codebook_sizes, where: str) -> None:
    if not codebook_sizes or any((not isinstance(c, int)) or c <= 0 for c in codebook_sizes):
        raise ValueError(f"{where}: `codebook_sizes` must be a non-empty list of positive ints, got {codebook_sizes}")


def _check_divisible(width: int, heads: int, where: str) -> None:
    if heads <= 0 or width % heads != 0:
        raise ValueError(f"{where}: hidden size {width} is not divisible by the number of attention heads {heads}")


@strict
class BaichuanAudioTokenizerConfig(PreTrainedConfig):
    r"""Configuration of the audio tokenizer: speech (16 kHz) -> 12.5 Hz frames of ``len(codebook_sizes)`` codes.

    Args:
        num_mel_bins: log-mel bins of the Whisper-style front end (128 for large-v3 geometry).
        sampling_rate: input sampling rate of the front end.
        hop_length / n_fft: STFT hop and size of the front end.
        max_audio_seconds: audio longer than this is split into pieces of this length (each its own encoder row).
        split_overlap: overlap between pieces, in seconds (0 in the released model).
        d_model / encoder_layers / encoder_attention_heads / encoder_ffn_dim: Whisper-style encoder size.
        activation_function: activation of the encoder MLP and conv stem.
        kernel_size / stride_size: conv stem (conv2 has the stride).
        scale_embedding: scale the conv output by sqrt(d_model) (False, as in Whisper).
        layer_norm_eps: LayerNorm epsilon of the encoder and bridge.
        avg_pooler: downsampling factor of the gated-conv bridge (4 -> 12.5 Hz).
        codebook_sizes: sizes of the residual VQ stages; code ``codebook_sizes[i]`` is the end-of-audio id.
    """

    model_type = "baichuan_audio_tokenizer"
    base_config_key = "audio_tokenizer_config"

    num_mel_bins: int = 128
    sampling_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 400
    max_audio_seconds: int = 30
    split_overlap: float = 0.0
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    activation_function: str = "gelu"
    kernel_size: int = 3
    stride_size: int = 2
    scale_embedding: bool = False
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    dropout: float = 0.0
    avg_pooler: int = 4
    codebook_sizes: list[int] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.codebook_sizes is None:
            self.codebook_sizes = list(DEFAULT_CODEBOOK_SIZES)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_codebooks(self.codebook_sizes, "BaichuanAudioTokenizerConfig")
        _check_divisible(self.d_model, self.encoder_attention_heads, "BaichuanAudioTokenizerConfig (encoder)")
        if self.avg_pooler <= 0 or self.stride_size <= 0:
            raise ValueError("BaichuanAudioTokenizerConfig: `avg_pooler` and `stride_size` must be positive")

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    @property
    def max_source_positions(self) -> int:
        """Encoder positions of one piece (1500 for 30 s)."""
        return (self.max_audio_seconds * self.sampling_rate // self.hop_length) // self.stride_size

    @property
    def bridge_dim(self) -> int:
        """Width of the bridge output and of the code vectors (d_model * avg_pooler)."""
        return self.d_model * self.avg_pooler

    @property
    def frame_rate(self) -> float:
        """Code frames per second (12.5 in the released model)."""
        return self.sampling_rate / self.hop_length / self.stride_size / self.avg_pooler


@strict
class BaichuanAudioHeadConfig(PreTrainedConfig):
    r"""Configuration of the audio head: a causal depth transformer over the codebook positions of one frame.

    Args:
        hidden_size: width (= the LLM hidden size, since position 0 is the LLM hidden state).
        num_hidden_layers: depth-transformer layers (3).
        num_attention_heads: attention heads (hidden_size // 128 in the original).
        intermediate_size: width of the per-position feed-forward (2 * hidden_size in the original).
        codebook_sizes: one classifier of ``size + 1`` classes per codebook (the last class is end-of-audio).
        rms_norm_eps: epsilon of the RMSNorms.
        hidden_act: activation of the per-position feed-forward.
    """

    model_type = "baichuan_audio_head"
    base_config_key = "audio_head_config"

    hidden_size: int = 3584
    num_hidden_layers: int = 3
    num_attention_heads: int = 28
    intermediate_size: int = 7168
    codebook_sizes: list[int] | None = None
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.codebook_sizes is None:
            self.codebook_sizes = list(DEFAULT_CODEBOOK_SIZES)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_codebooks(self.codebook_sizes, "BaichuanAudioHeadConfig")
        _check_divisible(self.hidden_size, self.num_attention_heads, "BaichuanAudioHeadConfig")

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)


#: The original ``HiFTGenerator`` constructor's keyword defaults (CosyVoice's, 22.05 kHz) and its F0 predictor's.
ORIGINAL_HIFT_DEFAULTS = {
    "in_channels": 80,
    "base_channels": 512,
    "nb_harmonics": 8,
    "sampling_rate": 22050,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "nsf_voiced_threshold": 10,
    "upsample_rates": [8, 8],
    "upsample_kernel_sizes": [16, 16],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
}
ORIGINAL_F0_PREDICTOR_DEFAULTS = {"num_class": 1, "in_channels": 80, "cond_channels": 512}


@strict
class BaichuanAudioVocoderConfig(PreTrainedConfig):
    r"""Configuration of the HiFT vocoder (CosyVoice 2 style NSF + iSTFT generator), mel (50 fps) -> 24 kHz.

    The field names follow the original ``HiFTGenerator`` constructor; ``istft_params`` is flattened into
    ``istft_n_fft`` / ``istft_hop_length`` and the F0 predictor arguments into ``f0_predictor_*``.
    """

    model_type = "baichuan_audio_vocoder"
    base_config_key = "vocoder_config"

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: list[int] | None = None
    upsample_kernel_sizes: list[int] | None = None
    istft_n_fft: int = 16
    istft_hop_length: int = 4
    resblock_kernel_sizes: list[int] | None = None
    resblock_dilation_sizes: list[list[int]] | None = None
    source_resblock_kernel_sizes: list[int] | None = None
    source_resblock_dilation_sizes: list[list[int]] | None = None
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor_num_class: int = 1
    f0_predictor_cond_channels: int = 512

    def __post_init__(self, **kwargs):
        if self.upsample_rates is None:
            self.upsample_rates = [8, 5, 3]
        if self.upsample_kernel_sizes is None:
            self.upsample_kernel_sizes = [16, 11, 7]
        if self.resblock_kernel_sizes is None:
            self.resblock_kernel_sizes = [3, 7, 11]
        if self.resblock_dilation_sizes is None:
            self.resblock_dilation_sizes = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
        if self.source_resblock_kernel_sizes is None:
            self.source_resblock_kernel_sizes = [7, 7, 11]
        if self.source_resblock_dilation_sizes is None:
            self.source_resblock_dilation_sizes = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                "BaichuanAudioVocoderConfig: `upsample_rates` and `upsample_kernel_sizes` differ in length"
            )
        if len(self.resblock_dilation_sizes) < len(self.resblock_kernel_sizes):  # extra dilation lists are ignored
            raise ValueError("BaichuanAudioVocoderConfig: fewer `resblock_dilation_sizes` than `resblock_kernel_sizes`")
        # one source branch (downsampling conv + resblock) is added after each upsampling stage; as in the original
        # (``zip``), entries beyond the stages are ignored
        n_up = len(self.upsample_rates)
        if min(len(self.source_resblock_kernel_sizes), len(self.source_resblock_dilation_sizes)) < n_up:
            raise ValueError(
                "BaichuanAudioVocoderConfig: `source_resblock_kernel_sizes` and `source_resblock_dilation_sizes` need "
                f"one entry per upsampling stage ({n_up}), got {len(self.source_resblock_kernel_sizes)} and "
                f"{len(self.source_resblock_dilation_sizes)}"
            )

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (8 * 5 * 3 * 4 = 480)."""
        hop = self.istft_hop_length
        for r in self.upsample_rates:
            hop *= r
        return hop

    @classmethod
    def from_original(cls, hift_kwargs: dict) -> BaichuanAudioVocoderConfig:
        """Build from the original ``HiFTGenerator`` constructor arguments (``vocoder_config.json`` of a fixture).

        Absent arguments take the constructor's own defaults (:data:`ORIGINAL_HIFT_DEFAULTS`: 22.05 kHz, two 8x
        upsampling stages, ...), not the released vocoder's values (which are this config's defaults, used when no
        constructor arguments are given at all).
        """
        kwargs = {**copy.deepcopy(ORIGINAL_HIFT_DEFAULTS), **hift_kwargs}
        kwargs["f0_predictor"] = {**ORIGINAL_F0_PREDICTOR_DEFAULTS, **(kwargs.get("f0_predictor") or {})}
        istft = kwargs.pop("istft_params", None) or {}
        f0 = kwargs.pop("f0_predictor", None) or {}
        if "n_fft" in istft:
            kwargs["istft_n_fft"] = istft["n_fft"]
        if "hop_len" in istft:
            kwargs["istft_hop_length"] = istft["hop_len"]
        if "num_class" in f0:
            kwargs["f0_predictor_num_class"] = f0["num_class"]
        if "cond_channels" in f0:
            kwargs["f0_predictor_cond_channels"] = f0["cond_channels"]
        if f0.get("in_channels", kwargs.get("in_channels", 80)) != kwargs.get("in_channels", 80):
            raise ValueError("vocoder: f0_predictor.in_channels must equal in_channels")
        for key in ("nsf_voiced_threshold", "nsf_alpha", "nsf_sigma", "lrelu_slope", "audio_limit"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)


@strict
class BaichuanAudioReconstructionDecoderConfig(PreTrainedConfig):
    r"""Configuration of the causal reconstruction decoder of code2wav (original ``audio_decoder``).

    Args:
        num_hidden_layers / num_attention_heads / intermediate_size / activation_function / layer_norm_eps: the causal
            Whisper-style layers (original ``decoder_layers`` / ``decoder_attention_heads`` / ``decoder_ffn_dim``).
        kernel_size: of both transposed convs (``dconv1`` upsamples by the tokenizer's ``avg_pooler``).
        stride_size: ``dconv2``'s upsampling (legacy branch).
        legacy_mel_bins / legacy_post_net_channels / legacy_mel_sampling_rate / legacy_mel_hop_length: the legacy
            coarse-mel branch (``dconv2`` + post-net, the original's ``vocoder_config``), loaded but not run by default.
    """

    model_type = "baichuan_audio_code2wav_decoder"
    base_config_key = "decoder_config"

    num_hidden_layers: int = 8
    num_attention_heads: int = 20
    intermediate_size: int = 5120
    kernel_size: int = 3
    stride_size: int = 2
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5
    legacy_mel_bins: int = 80
    legacy_post_net_channels: list[int] | None = None
    legacy_mel_sampling_rate: int = 16000
    legacy_mel_hop_length: int = 256

    def __post_init__(self, **kwargs):
        if self.legacy_post_net_channels is None:
            self.legacy_post_net_channels = [256, 256, 256, 256, 256]
        super().__post_init__(**kwargs)


#: Values of ``BaichuanAudioFlowMatchingConfig.compute_dtype`` (None: the weights' dtype).
FLOW_MATCHING_COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")


@strict
class BaichuanAudioFlowMatchingConfig(PreTrainedConfig):
    r"""Configuration of code2wav's flow matching (original ``flow_matching_config``, field names kept).

    Args:
        prenet_*: the causal prenet producing the prior ``mu`` from the decoder's hidden states (``prenet_in_dim`` =
            the decoder width, ``prenet_out_dim`` = ``in_channels`` mel bins).
        in_channels / spk_emb_dim / channels / n_blocks / num_mid_blocks / num_heads / attention_head_dim / act_fn /
            dropout: the causal matcha U-Net estimator; ``static_chunk_size`` is its attention chunk (100 frames = 2 s).
        diffusion_steps / sigma_min / t_scheduler / inference_cfg_rate / training_cfg_rate / temperature: the Euler
            sampler of the conditional flow matching (the original's ``cfm_params``).
        mel_sampling_rate / mel_hop_length: the 24 kHz / hop-480 mel grid of the vocoder.
        compute_dtype: ``None`` (default: the weights' dtype, fp32, parity-exact) or ``"bfloat16"`` / ``"float16"``:
            the U-Net estimator runs under ``torch.autocast`` in that dtype (the fast path: about 1.5x on a CPU with
            AVX512-BF16 and on GPUs, with a mel error of about 1e-2; see ``benchmarks/bench_code2wav.py``). Not on a
            CPU without native bf16 (AVX2 only): there torch's bf16 products are far slower than fp32 (measured on
            an AMD EPYC Zen 3, 2 threads: a 2048 x 2048 bf16 matmul at 0.3 GFLOP/s against 169 in fp32, a 3.2 s
            decode 39.0 s against 5.6 s; the estimator warns once on such a CPU). Not a field of the original.
        num_decoding_left_chunks: how many earlier ``static_chunk_size`` chunks a U-Net attention chunk sees (the
            ``num_decoding_left_chunks`` of CosyVoice's chunk mask): ``-1`` (default, the original) every earlier
            chunk, so the attention work of a chunk grows with the phrase; ``n >= 0`` only the ``n`` before it, a
            bounded-context policy that makes streamed chunks cost the same at any phrase length (one-shot and
            streamed decodes apply the same mask, so they still agree; the mel is not the original's: see
            ``benchmarks/bench_code2wav_streaming.py --left-chunks``). Not a field of the original.
    """

    model_type = "baichuan_audio_flow_matching"
    base_config_key = "flow_matching_config"

    prenet_in_dim: int = 1280
    prenet_out_dim: int = 80
    prenet_d_model: int = 512
    prenet_attention_heads: int = 8
    prenet_ffn_dim: int = 2048
    prenet_nlayers: int = 12
    prenet_activation_function: str = "gelu"
    prenet_max_source_positions: int = 5000
    prenet_target_mel_length_scale_ratio: float = 1.0
    in_channels: int = 80
    spk_emb_dim: int = 0
    channels: list[int] | None = None
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    attention_head_dim: int = 64
    act_fn: str = "gelu"
    dropout: float = 0.0
    static_chunk_size: int = 100
    diffusion_steps: int = 10
    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7
    training_cfg_rate: float = 0.2
    temperature: float = 1.0
    mel_sampling_rate: int = 24000
    mel_hop_length: int = 480
    compute_dtype: str | None = None
    num_decoding_left_chunks: int = -1

    def __post_init__(self, **kwargs):
        if self.channels is None:
            self.channels = [256]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_divisible(self.prenet_d_model, self.prenet_attention_heads, "BaichuanAudioFlowMatchingConfig (prenet)")
        if self.in_channels != self.prenet_out_dim:
            raise ValueError("BaichuanAudioFlowMatchingConfig: in_channels must equal prenet_out_dim")
        if self.t_scheduler not in ("cosine", "linear"):
            raise ValueError(f"BaichuanAudioFlowMatchingConfig: unknown t_scheduler {self.t_scheduler!r}")
        if self.diffusion_steps <= 0:
            raise ValueError("BaichuanAudioFlowMatchingConfig: diffusion_steps must be positive")
        if self.compute_dtype not in FLOW_MATCHING_COMPUTE_DTYPES:
            raise ValueError(
                f"BaichuanAudioFlowMatchingConfig: compute_dtype must be one of {FLOW_MATCHING_COMPUTE_DTYPES}, "
                f"got {self.compute_dtype!r}"
            )
        left = self.num_decoding_left_chunks
        if not is_int_at_least(left, -1):
            raise ValueError(
                "BaichuanAudioFlowMatchingConfig: num_decoding_left_chunks must be -1 (every earlier chunk) or an int "
                f">= 0, got {left!r}"
            )


#: Flat ``BaichuanAudioCode2WavConfig`` fields of earlier versions -> (sub-config, field): old configs still load.
LEGACY_CODE2WAV_FIELDS = {
    "decoder_layers": ("decoder_config", "num_hidden_layers"),
    "decoder_attention_heads": ("decoder_config", "num_attention_heads"),
    "decoder_ffn_dim": ("decoder_config", "intermediate_size"),
    "decoder_kernel_size": ("decoder_config", "kernel_size"),
    "decoder_stride_size": ("decoder_config", "stride_size"),
    "activation_function": ("decoder_config", "activation_function"),
    "layer_norm_eps": ("decoder_config", "layer_norm_eps"),
    **{
        f"legacy_{k}": ("decoder_config", f"legacy_{k}")
        for k in ("mel_bins", "post_net_channels", "mel_sampling_rate", "mel_hop_length")
    },
    **{
        name: ("flow_matching_config", name)
        for name in BaichuanAudioFlowMatchingConfig.__dataclass_fields__
        if name not in PreTrainedConfig.__dataclass_fields__
    },
}


@strict
class BaichuanAudioCode2WavConfig(PreTrainedConfig):
    r"""Configuration of code2wav: RVQ codes (12.5 Hz) -> reconstruction decoder (50 fps) -> flow-matching mel ->
    HiFT vocoder (24 kHz), composed like ``Qwen2_5OmniToken2WavConfig``.

    Args:
        codebook_sizes / d_model / avg_pooler: must match the audio tokenizer (the code vectors are
            ``d_model * avg_pooler`` wide and are projected back to ``d_model``).
        sampling_rate / hop_length / max_audio_seconds: the 16 kHz encoder grid (length of the positional table).
        decoder_config: :class:`BaichuanAudioReconstructionDecoderConfig`.
        flow_matching_config: :class:`BaichuanAudioFlowMatchingConfig` (``prenet_in_dim`` defaults to ``d_model``).
        vocoder_config: :class:`BaichuanAudioVocoderConfig`.

    Flat configs of earlier versions (``decoder_layers``, ``prenet_d_model``, ``channels`` ... at the top level,
    see :data:`LEGACY_CODE2WAV_FIELDS`) are folded into the sub-configs when loaded.
    """

    model_type = "baichuan_audio_code2wav"
    base_config_key = "code2wav_config"
    sub_configs_defaults = {
        "decoder_config": BaichuanAudioReconstructionDecoderConfig,
        "flow_matching_config": BaichuanAudioFlowMatchingConfig,
        "vocoder_config": BaichuanAudioVocoderConfig,
    }

    codebook_sizes: list[int] | None = None
    d_model: int = 1280
    avg_pooler: int = 4
    sampling_rate: int = 16000
    hop_length: int = 160
    max_audio_seconds: int = 30
    initializer_range: float = 0.02
    decoder_config: dict | PreTrainedConfig | None = None
    flow_matching_config: dict | PreTrainedConfig | None = None
    vocoder_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs):
        if self.codebook_sizes is None:
            self.codebook_sizes = list(DEFAULT_CODEBOOK_SIZES)
        subs = {}
        for name in ("decoder_config", "flow_matching_config"):
            value = getattr(self, name)
            subs[name] = dict(value) if isinstance(value, dict) else ({} if value is None else value)
        for old in [k for k in kwargs if k in LEGACY_CODE2WAV_FIELDS]:
            sub, field = LEGACY_CODE2WAV_FIELDS[old]
            value = kwargs.pop(old)
            if isinstance(subs[sub], dict):
                subs[sub].setdefault(field, value)
        if isinstance(subs["flow_matching_config"], dict):
            subs["flow_matching_config"].setdefault("prenet_in_dim", self.d_model)
        self.decoder_config, self.flow_matching_config = subs["decoder_config"], subs["flow_matching_config"]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_codebooks(self.codebook_sizes, "BaichuanAudioCode2WavConfig")
        _check_divisible(self.d_model, self.decoder_config.num_attention_heads, "BaichuanAudioCode2WavConfig (decoder)")
        if self.flow_matching_config.prenet_in_dim != self.d_model:
            raise ValueError(
                f"BaichuanAudioCode2WavConfig: flow_matching_config.prenet_in_dim "
                f"({self.flow_matching_config.prenet_in_dim}) must equal d_model ({self.d_model})"
            )

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    @property
    def code_dim(self) -> int:
        return self.d_model * self.avg_pooler

    @property
    def max_source_positions(self) -> int:
        """Length of the decoder's positional table (3000 = 30 s at 100 fps)."""
        return self.max_audio_seconds * self.sampling_rate // self.hop_length


# Real Qwen2.5-7B values of the original LLM (reference-architecture.md section 5 / 12).
_TEXT_CONFIG_DEFAULTS = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "max_window_layers": 28,
}

TOKEN_ID_FIELDS = (
    "audio_start_token_id",
    "audio_end_token_id",
    "audio_pad_token_id",
    "audio_delim_token_id",
    "audiotext_start_token_id",
    "audiotext_end_token_id",
    "audiotext_pad_token_id",
    "audiogen_start_token_id",
    "audiogen_end_token_id",
    "system_token_id",
    "user_token_id",
    "assistant_token_id",
)


@strict
class BaichuanAudioConfig(PreTrainedConfig):
    r"""Configuration of :class:`BaichuanAudioForConditionalGeneration`.

    Args:
        text_config: the Qwen2 LLM config (dict or ``Qwen2Config``).
        audio_tokenizer_config / audio_head_config / code2wav_config: the audio sub-configs (dicts or configs).
            ``codebook_sizes`` and the head's ``hidden_size`` are derived from the tokenizer / text config when the
            sub-config is given as a dict without them.
        audio_*_token_id / audiotext_*_token_id / audiogen_*_token_id: ids of the Baichuan special tokens
            (``<audio_start_baichuan>`` ...). Read from the checkpoint's config and tokenizer by the converter.
        system_token_id / user_token_id / assistant_token_id: ids of ``<B_SYS>``, ``<C_Q>``, ``<C_A>``.
        enable_audio_output: build the code2wav sub-model (waveform output). Without it, generation returns codes.
        audio_loss_weights: per-codebook weights of the audio cross-entropies (default all 1.0).
        text_loss_weight: weight of the text cross-entropy in the total loss.
    """

    model_type = "baichuan_audio"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2", init_kwargs=_TEXT_CONFIG_DEFAULTS),
        "audio_tokenizer_config": BaichuanAudioTokenizerConfig,
        "audio_head_config": BaichuanAudioHeadConfig,
        "code2wav_config": BaichuanAudioCode2WavConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_tokenizer_config: dict | PreTrainedConfig | None = None
    audio_head_config: dict | PreTrainedConfig | None = None
    code2wav_config: dict | PreTrainedConfig | None = None
    audio_start_token_id: int = 151676
    audio_end_token_id: int = 151677
    audio_pad_token_id: int = 151678
    audio_delim_token_id: int = 151693
    audiotext_start_token_id: int = 151697
    audiotext_end_token_id: int = 151698
    audiotext_pad_token_id: int = 151699
    audiogen_start_token_id: int = 151700
    audiogen_end_token_id: int = 151701
    system_token_id: int = 151665
    user_token_id: int = 151667
    assistant_token_id: int = 151668
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 151643
    pad_token_id: int | None = 151643
    enable_audio_output: bool = True
    audio_loss_weights: list[float] | None = None
    text_loss_weight: float = 1.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        text_hidden = _TEXT_CONFIG_DEFAULTS["hidden_size"]
        if isinstance(self.text_config, dict):
            text_hidden = self.text_config.get("hidden_size", text_hidden)
        elif self.text_config is not None:
            text_hidden = self.text_config.hidden_size

        codebook_sizes = list(DEFAULT_CODEBOOK_SIZES)
        tok = self.audio_tokenizer_config
        if isinstance(tok, dict) and tok.get("codebook_sizes") is not None:
            codebook_sizes = list(tok["codebook_sizes"])
        elif isinstance(tok, PreTrainedConfig):
            codebook_sizes = list(tok.codebook_sizes)

        if self.audio_head_config is None:
            self.audio_head_config = {}
        if isinstance(self.audio_head_config, dict):
            head = dict(self.audio_head_config)
            head.setdefault("hidden_size", text_hidden)
            head.setdefault("codebook_sizes", codebook_sizes)
            head.setdefault("num_attention_heads", max(1, head["hidden_size"] // 128))
            head.setdefault("intermediate_size", 2 * head["hidden_size"])
            self.audio_head_config = head

        if self.code2wav_config is None:
            self.code2wav_config = {}
        if isinstance(self.code2wav_config, dict):
            c2w = dict(self.code2wav_config)
            c2w.setdefault("codebook_sizes", codebook_sizes)
            if isinstance(tok, dict):
                for key in ("d_model", "avg_pooler"):
                    if key in tok:
                        c2w.setdefault(key, tok[key])
            elif isinstance(tok, PreTrainedConfig):
                c2w.setdefault("d_model", tok.d_model)
                c2w.setdefault("avg_pooler", tok.avg_pooler)
            self.code2wav_config = c2w

        if self.audio_loss_weights is None:
            self.audio_loss_weights = [1.0] * len(codebook_sizes)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        tok, head, c2w = self.audio_tokenizer_config, self.audio_head_config, self.code2wav_config
        sizes = list(tok.codebook_sizes)
        if list(head.codebook_sizes) != sizes:
            raise ValueError(
                f"BaichuanAudioConfig: audio_head_config.codebook_sizes {head.codebook_sizes} != "
                f"audio_tokenizer_config.codebook_sizes {sizes}"
            )
        if list(c2w.codebook_sizes) != sizes:
            raise ValueError(
                f"BaichuanAudioConfig: code2wav_config.codebook_sizes {c2w.codebook_sizes} != "
                f"audio_tokenizer_config.codebook_sizes {sizes}"
            )
        if head.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"BaichuanAudioConfig: audio_head_config.hidden_size ({head.hidden_size}) must equal the LLM hidden "
                f"size ({self.text_config.hidden_size})"
            )
        if (c2w.d_model, c2w.avg_pooler) != (tok.d_model, tok.avg_pooler):
            raise ValueError("BaichuanAudioConfig: code2wav_config d_model/avg_pooler must match the audio tokenizer")
        if len(self.audio_loss_weights) != len(sizes):
            raise ValueError(
                f"BaichuanAudioConfig: {len(self.audio_loss_weights)} audio_loss_weights for {len(sizes)} codebooks"
            )
        vocab = self.text_config.vocab_size
        for name in TOKEN_ID_FIELDS:
            value = getattr(self, name)
            if not 0 <= value < vocab:
                raise ValueError(f"BaichuanAudioConfig: {name}={value} is outside the text vocabulary (size {vocab})")

    def get_text_config(self, *args, **kwargs):
        return self.text_config

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As :meth:`PreTrainedConfig.from_dict`; an ORIGINAL checkpoint's config (``model_type`` ``"omni"``) is
        refused with the way to load it (it needs its weights converted, not just its config)."""
        if config_dict.get("model_type") == "omni":
            raise ValueError(
                "this is an ORIGINAL Baichuan-Audio checkpoint (model_type 'omni'): convert it once with "
                "`baichuan-audio convert SRC DST --vocoder hift.pt`, or load it converted in memory with "
                "`transformers_baichuan_audio.load_original_model(path, vocoder=...)`"
            )
        return super().from_dict(config_dict, **kwargs)

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.audio_tokenizer_config.codebook_sizes)

    @property
    def num_codebooks(self) -> int:
        return len(self.audio_tokenizer_config.codebook_sizes)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @classmethod
    def tiny(cls, **overrides) -> BaichuanAudioConfig:
        """A small config with the real structure (8 codebooks, 3 head layers, causal decoders, 10 ODE steps).

        Runs in milliseconds on CPU; used by the tests, the examples and ``--model tiny-random``. The text vocabulary
        keeps the real Qwen2 size so the real tokenizer can be used; ``overrides`` replace top-level fields.
        """
        kwargs = copy.deepcopy(_TINY)
        kwargs.update(overrides)
        return cls(**kwargs)


_TINY = {
    "text_config": {
        "model_type": "qwen2",
        "vocab_size": 152064,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "max_window_layers": 2,
    },
    "audio_tokenizer_config": {
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "codebook_sizes": [32, 16, 16, 16, 16, 16, 16, 16],
    },
    "audio_head_config": {"num_attention_heads": 2, "intermediate_size": 128},
    "code2wav_config": {
        "decoder_config": {
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "legacy_post_net_channels": [16, 16, 16, 16, 16],
        },
        "flow_matching_config": {
            "prenet_d_model": 32,
            "prenet_attention_heads": 2,
            "prenet_ffn_dim": 64,
            "prenet_nlayers": 2,
            "channels": [32],
            "n_blocks": 1,
            "num_mid_blocks": 2,
            "num_heads": 2,
            "attention_head_dim": 16,
        },
        "vocoder_config": {"base_channels": 16, "f0_predictor_cond_channels": 16},
    },
}


def register_configs() -> None:
    """Register every config type with ``AutoConfig`` (idempotent)."""
    for cfg in (
        BaichuanAudioConfig,
        BaichuanAudioTokenizerConfig,
        BaichuanAudioHeadConfig,
        BaichuanAudioCode2WavConfig,
        BaichuanAudioReconstructionDecoderConfig,
        BaichuanAudioFlowMatchingConfig,
        BaichuanAudioVocoderConfig,
    ):
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)


__all__ = [
    "BaichuanAudioConfig",
    "is_int_at_least",
    "BaichuanAudioTokenizerConfig",
    "BaichuanAudioHeadConfig",
    "BaichuanAudioCode2WavConfig",
    "BaichuanAudioReconstructionDecoderConfig",
    "BaichuanAudioFlowMatchingConfig",
    "BaichuanAudioVocoderConfig",
    "LEGACY_CODE2WAV_FIELDS",
    "DEFAULT_CODEBOOK_SIZES",
    "TOKEN_ID_FIELDS",
]
