"""Reading original checkpoints lazily and converting their weights.

An original Baichuan-Audio checkpoint is a directory with ``config.json`` and ``model.safetensors`` or shards
``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` (about 21 GB for the released model). The
converter walks it shard by shard: each original tensor is converted by the component that owns its key (audio
tokenizer, code2wav, or the LLM / audio embeddings / audio head), written to an output shard as soon as the shard
is full, and dropped. Peak memory is therefore about one original shard plus one output shard.

Every original key must be claimed: converted, or dropped on the documented list of its component. An unknown key,
a missing key or a shape mismatch raises :class:`ConversionError` naming the key.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ConversionError

# A component converter maps a subset of original tensors (full original names) to new tensors (names relative to
# BaichuanAudioForConditionalGeneration) and returns the set of original keys it consumed or deliberately dropped.
ComponentConverter = Callable[[Mapping[str, torch.Tensor]], tuple[dict[str, torch.Tensor], set[str]]]


class OriginalCheckpoint:
    """Lazy view of an original checkpoint directory (single file or index + shards)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path}: no config.json (not an original checkpoint directory)")
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.shards = sorted(set(weight_map.values()))
            self.key_to_shard = dict(weight_map)
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.path}: no safetensors weights found")
            self.shards = files
            self.key_to_shard = {}
            for name in files:
                with safe_open(str(self.path / name), framework="pt") as f:
                    for key in f.keys():
                        self.key_to_shard[key] = name

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def generation_config(self) -> dict | None:
        p = self.path / "generation_config.json"
        return json.loads(p.read_text()) if p.exists() else None

    def tokenizer_dir(self) -> Path | None:
        for cand in (self.path, self.path / "tokenizer"):
            if (cand / "tokenizer.json").exists() or (cand / "tokenizer_config.json").exists():
                return cand
        return None

    def keys(self) -> list[str]:
        return list(self.key_to_shard)

    def iter_shards(self) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the tensors of one shard at a time."""
        for name in self.shards:
            with safe_open(str(self.path / name), framework="pt") as f:
                yield {key: f.get_tensor(key) for key in f.keys()}

    def load_all(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for shard in self.iter_shards():
            state.update(shard)
        return state


def load_vocoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The HiFT vocoder weights from ``hift.pt`` (pickle, loaded with ``weights_only=True``) or a safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def convert_tensors(
    tensors: Mapping[str, torch.Tensor], converters: list[ComponentConverter]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Run every component converter on ``tensors``; fail on keys no component claims."""
    out: dict[str, torch.Tensor] = {}
    claimed: set[str] = set()
    for convert in converters:
        converted, consumed = convert(tensors)
        clash = set(converted) & set(out)
        if clash:
            raise ConversionError(f"two components produced the same keys: {sorted(clash)[:5]}")
        out.update(converted)
        claimed |= consumed
    unknown = sorted(set(tensors) - claimed)
    if unknown:
        raise ConversionError(f"unknown original key(s), not converted by any component: {unknown[:10]}")
    return out, claimed


def check_against_model(converted_shapes: dict[str, tuple], expected_shapes: dict[str, tuple]) -> None:
    """Compare converted keys/shapes with the target model's state dict; raise naming the first problems."""
    missing = sorted(set(expected_shapes) - set(converted_shapes))
    if missing:
        raise ConversionError(f"missing weight(s) after conversion (not in the original checkpoint?): {missing[:10]}")
    extra = sorted(set(converted_shapes) - set(expected_shapes))
    if extra:
        raise ConversionError(f"converted key(s) unknown to the model: {extra[:10]}")
    for key, shape in converted_shapes.items():
        if tuple(shape) != tuple(expected_shapes[key]):
            raise ConversionError(
                f"shape mismatch for {key}: checkpoint gives {tuple(shape)}, model expects {tuple(expected_shapes[key])}"
            )


class ShardWriter:
    """Accumulates tensors and writes ``model-XXXXX.safetensors`` shards of at most ``max_shard_bytes``."""

    def __init__(self, out_dir: Path, max_shard_bytes: int):
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self._pointers: set[int] = set()
        self.buffer_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        tensor = tensor.contiguous()
        if tensor.data_ptr() in self._pointers:  # e.g. the RVQ tables read by two components: store two copies
            tensor = tensor.clone()
        self._pointers.add(tensor.data_ptr())
        self.buffer[key] = tensor
        self.buffer_bytes += nbytes
        self.total_bytes += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.buffer, str(self.out_dir / name), metadata={"format": "pt"})
        self.files.append((name, list(self.buffer)))
        self.buffer = {}
        self._pointers = set()
        self.buffer_bytes = 0
        gc.collect()

    def finish(self) -> None:
        self.flush()
        n = len(self.files)
        final_names = []
        for i, (name, keys) in enumerate(self.files):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out_dir / name).rename(self.out_dir / final)
            final_names.append((final, keys))
        if n > 1:
            weight_map = {key: final for final, keys in final_names for key in keys}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


__all__ = [
    "OriginalCheckpoint",
    "ShardWriter",
    "convert_tensors",
    "check_against_model",
    "load_vocoder_state_dict",
    "ComponentConverter",
]
