"""Synthetic Llama-architecture checkpoints for the growth benchmark and the memory-bound test.

A checkpoint is built locally from a ``LlamaConfig`` with random weights (nothing is
downloaded), saved as sharded bf16 safetensors with a ``model.safetensors.index.json`` as
``save_pretrained`` writes it, plus a byte-level tokenizer (the 256 byte symbols and four
special tokens, no merges: every text tokenizes, and building it takes no training). The
weights are drawn shard by shard from a seeded generator, so building the 1.5B model needs
one shard's memory (not the 3 GB model), and the same size always gives the same bytes.

Checkpoints are built once and cached under the test cache directory
(``KUBEQUANT_TEST_CACHE_DIR``, default ``<repo>/.kubequant-cache``, which git ignores),
keyed by a hash of the config and :data:`BUILDER_VERSION`; a file lock keeps concurrent
processes from building the same one twice. Random weights make every quality figure
meaningless: these models measure memory and time only.

    python -m tests.performance.synthetic 0.1b   # build (or find) one, print its path
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUILDER_VERSION = 1
SHARD_BYTES = 200 * 1000 * 1000  # every size is sharded (the 0.1B model into two files)
INIT_STD = 0.02  # LlamaConfig.initializer_range
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
DTYPE_BYTES = 2  # bf16


@dataclass(frozen=True)
class SyntheticSize:
    """A Llama shape; the head dimension is 64 or 128 and every Linear's input features are a
    multiple of 128 (GPTQ's default group size)."""

    label: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int = 32000
    max_position_embeddings: int = 2048

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    def parameters(self) -> int:
        """Parameter count (untied input and output embeddings, as Llama 2)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = 4 * h * h + 3 * h * i + 2 * h  # q, k, v, o; gate, up, down; two norms
        return 2 * self.vocab_size * h + layers * per_layer + h

    def bf16_bytes(self) -> int:
        return self.parameters() * DTYPE_BYTES

    def config_dict(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": False,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }

    def key(self) -> str:
        payload = json.dumps(
            {"config": self.config_dict(), "version": BUILDER_VERSION, "init_std": INIT_STD},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


SIZES: dict[str, SyntheticSize] = {
    # 105.8M parameters, 212 MB in bf16
    "0.1b": SyntheticSize("0.1b", 768, 2048, 8, 12),
    # 498.0M parameters, 996 MB
    "0.5b": SyntheticSize("0.5b", 1280, 3456, 21, 10),
    # 1.497B parameters, 2.99 GB
    "1.5b": SyntheticSize("1.5b", 2048, 5504, 27, 16),
}


def cache_root() -> Path:
    from tests.fixtures.models import cache_root as fixtures_cache_root

    return fixtures_cache_root()


def _write_tokenizer(out_dir: Path, max_length: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
    fast.save_pretrained(out_dir)


def _shapes(size: SyntheticSize) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter's name and shape, in the model's order, from a weightless skeleton."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**size.config_dict())
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    return [(name, tuple(p.shape)) for name, p in skeleton.named_parameters()]


def _build(size: SyntheticSize, out_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(**size.config_dict())
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    config.save_pretrained(out_dir)
    _write_tokenizer(out_dir, size.max_position_embeddings)

    shapes = _shapes(size)
    total = sum(math.prod(shape) for _, shape in shapes) * DTYPE_BYTES
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    filled = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * DTYPE_BYTES
        if groups[-1] and filled + nbytes > SHARD_BYTES:
            groups.append([])
            filled = 0
        groups[-1].append((name, shape))
        filled += nbytes
    gen = torch.Generator().manual_seed(int(size.key(), 16) % (2**31))
    weight_map: dict[str, str] = {}
    for n, group in enumerate(groups, start=1):
        fname = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for name, shape in group:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                values = torch.empty(shape, dtype=torch.float32).normal_(
                    0.0, INIT_STD, generator=gen
                )
                tensors[name] = values.to(torch.bfloat16)
                del values
            weight_map[name] = fname
        save_file(tensors, str(out_dir / fname), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    info = {"size": asdict(size), "parameters": size.parameters(), "bf16_bytes": total}
    (out_dir / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")


def build_synthetic(label: str, root: Path | None = None) -> Path:
    """Path to the synthetic checkpoint ``label`` (a key of :data:`SIZES`), built once."""
    from tests.fixtures.models import build_once

    try:
        size = SIZES[label]
    except KeyError:
        raise ValueError(f"unknown synthetic size {label!r} (known: {', '.join(SIZES)})") from None
    return build_once(
        root or cache_root(),
        f"synthetic-llama-{label}-{size.key()}",
        "synthetic.json",
        lambda staging: _build(size, staging),
    )


def checkpoint_bytes(path: Path) -> int:
    """Bytes of the checkpoint's safetensors files (what the memory ratios divide by)."""
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main(argv: Sequence[str] | None = None) -> int:
    labels = list(sys.argv[1:] if argv is None else argv) or list(SIZES)
    for label in labels:
        path = build_synthetic(label)
        print(f"{label}\t{SIZES[label].parameters() / 1e9:.3f}B\t{checkpoint_bytes(path)}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
