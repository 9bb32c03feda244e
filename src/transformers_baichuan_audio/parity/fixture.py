"""Reading a reference parity fixture directory (the format of ``shared/fixtures/reference/tiny-a``).

A fixture directory holds a small model in the ORIGINAL checkpoint layout (``config.json`` + ``model.safetensors``
or shards, possibly ``.xz``-compressed), the vocoder weights and constructor arguments, input wavs, and the original
implementation's recorded outputs under ``expected/``. Nothing about a particular fixture is assumed here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file

_CACHE_ENV = "BAICHUAN_AUDIO_FIXTURE_CACHE"


def _cache_root() -> Path:
    root = os.environ.get(_CACHE_ENV)
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transformers_baichuan_audio" / "fixtures"


class ReferenceFixture:
    """Lazy accessor for one fixture directory.

    ``checkpoint_dir`` is a directory with the original checkpoint layout (``*.xz`` files decompressed into a cache
    folder keyed by the fixture's path and file sizes, so repeated test runs decompress once).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a fixture directory (no config.json)")

    # ----------------------------------------------------------------- files
    @cached_property
    def checkpoint_dir(self) -> Path:
        """Directory with ``config.json`` and the (decompressed) original safetensors files."""
        xz_files = sorted(self.path.glob("*.xz"))
        if not xz_files:
            return self.path
        key = hashlib.sha256(
            "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in xz_files).encode()
        ).hexdigest()[:16]
        out = _cache_root() / key
        done = out / ".complete"
        if not done.exists():
            out.mkdir(parents=True, exist_ok=True)
            for f in xz_files:
                target = out / f.name[: -len(".xz")]
                tmp = target.with_suffix(target.suffix + ".part")
                with lzma.open(f, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
                tmp.replace(target)
            for f in self.path.iterdir():
                if f.is_file() and not f.name.endswith(".xz") and f.name.endswith((".json", ".safetensors")):
                    if f.name not in ("vocoder.safetensors", "vocoder_config.json", "checksums.json"):
                        shutil.copy2(f, out / f.name)
            done.touch()
        return out

    @cached_property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @cached_property
    def vocoder_config(self) -> dict:
        return json.loads((self.path / "vocoder_config.json").read_text())

    @cached_property
    def special_tokens(self) -> dict:
        p = self.path / "special_tokens.json"
        return json.loads(p.read_text()) if p.exists() else {}

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.path / "expected" / "meta.json").read_text())

    @cached_property
    def tolerance(self) -> dict:
        p = self.path / "expected" / "tolerance.json"
        return json.loads(p.read_text()) if p.exists() else {}

    @property
    def vocoder_path(self) -> Path:
        return self.path / "vocoder.safetensors"

    def tokenizer_dir(self) -> Path:
        """Directory with ``tokenizer.json`` (decompressed) and the tokenizer config files."""
        src = self.path / "tokenizer"
        if not (src / "tokenizer.json.xz").exists():
            return src
        out = self.checkpoint_dir / "tokenizer"
        if not (out / "tokenizer.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.name.endswith(".xz"):
                    tmp = out / (f.name[:-3] + ".part")
                    with lzma.open(f, "rb") as s, open(tmp, "wb") as d:
                        shutil.copyfileobj(s, d, length=1 << 22)
                    tmp.replace(out / f.name[:-3])
                else:
                    shutil.copy2(f, out / f.name)
        return out

    # --------------------------------------------------------------- tensors
    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the original checkpoint (single file or shards), original key names."""
        files = sorted(self.checkpoint_dir.glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        return state

    def vocoder_state_dict(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.vocoder_path))

    def expected(self, stage: str) -> dict[str, torch.Tensor]:
        """Tensors of ``expected/<stage>.safetensors`` (e.g. ``"frontend"``, ``"llm"``, ``"decode"``)."""
        return load_file(str(self.path / "expected" / f"{stage}.safetensors"))

    def has_stage(self, stage: str) -> bool:
        return (self.path / "expected" / f"{stage}.safetensors").exists()

    def input_wav(self, name: str) -> tuple[np.ndarray, int]:
        """float32 waveform (int16 / 32768, as torchaudio.load(normalize=True)) and its sampling rate."""
        data, sr = sf.read(str(self.path / "inputs" / f"{name}.wav"), dtype="int16", always_2d=True)
        wav = (data.astype(np.float32) / 32768.0).mean(axis=1) if data.shape[1] > 1 else data[:, 0] / 32768.0
        return wav.astype(np.float32), sr


#: Environment variable naming the reference fixture directory (first place looked at).
FIXTURE_ENV = "BAICHUAN_AUDIO_FIXTURE"
#: Where the fixture lies relative to the folder that holds the checkout (second place looked at).
SHARED_FIXTURE = Path("shared") / "fixtures" / "reference" / "tiny-a"


def checkout_fixture_dir() -> Path:
    """``<checkout>/../shared/fixtures/reference/tiny-a`` for this source checkout (``<checkout>/src/<package>``)."""
    return Path(__file__).resolve().parents[3].parent / SHARED_FIXTURE


def default_fixture_dir() -> Path | None:
    """The tiny-a reference fixture, looked up in this order (no download location is published yet):

    1. ``$BAICHUAN_AUDIO_FIXTURE``, returned as given even when it is not a fixture directory (so that a wrong
       setting is reported instead of silently skipped);
    2. ``../shared/fixtures/reference/tiny-a`` beside the source checkout.

    Returns None when neither is set / present (the tests that need it are then skipped)."""
    env = os.environ.get(FIXTURE_ENV)
    if env:
        return Path(env)
    candidate = checkout_fixture_dir()
    return candidate if (candidate / "config.json").is_file() else None


__all__ = ["FIXTURE_ENV", "SHARED_FIXTURE", "ReferenceFixture", "checkout_fixture_dir", "default_fixture_dir"]
