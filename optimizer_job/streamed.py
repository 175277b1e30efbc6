"""Load a model to transform it without mapping the checkpoint into memory.

``from_pretrained`` memory-maps every safetensors shard for the whole load, and the tensors it
leaves unquantized (embeddings, norms) are views into those maps, so they stay mapped after it
returns. By the end of a quantize-while-loading run the process therefore holds the quantized
model *and* every checkpoint page it touched, as file-backed resident memory: measured on a
0.5B bf16 checkpoint with torchao int8, 0.94x the checkpoint on top of the model.

Here the shards are opened with safetensors' ``pread`` backend instead and handed to
``from_pretrained`` as its ``state_dict``: transformers reads each tensor into its own buffer
when it reaches it, quantizes it and drops the full-precision one (it loads synchronously when
it quantizes on the fly), so the checkpoint is never resident as a whole. Together with
:func:`optimizer_job.heap.trimming_heap` the same load peaks at 0.70x the checkpoint instead of
2.3x (``make bench``'s growth table has the figures per size).

What ``from_pretrained`` does from a path and not from a state dict is done here too: the
model class comes from the config through the task's Auto class, ``config.name_or_path``
names the directory and ``generation_config.json`` is attached. A checkpoint this cannot
stream (no safetensors index or single file, ``.bin`` weights, a model that ships its own
code, a model class transformers does not map) is loaded from its path as before.

A caller may name tensors to serve from a memory map instead (``mapped``): ones the load
keeps as they are stored, which a forward reads only in part. An embedding table mapped
costs the rows a forward touches; read, all of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubequant_api.constants import Task
from optimizer_job.heap import slack_for, trimming_heap
from optimizer_job.loading import auto_class, remote_code, weights_size

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
# Given every tensor name of a checkpoint, the names to serve from a memory map.
Mapped = Callable[[list[str]], Collection[str]]
INDEX_FILE = "model.safetensors.index.json"


class LazyStateDict(dict[str, Any]):
    """Checkpoint slices, read when transformers materializes them.

    ``AutoModel*.from_pretrained`` deep-copies its keyword arguments and a safetensors slice
    cannot be copied; the slices are only read, so the dict is its own copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> LazyStateDict:
        return self


def shard_files(model_dir: Path) -> list[Path] | None:
    """The safetensors files holding the model's weights, or None when the directory has
    none (``.bin`` weights) or an index that names files it does not have."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(weight_map, dict) or not weight_map:
            return None
        files = [model_dir / str(name) for name in dict.fromkeys(weight_map.values())]
        return files if all(f.is_file() for f in files) else None
    single = model_dir / SINGLE_FILE
    return [single] if single.is_file() else None


@contextmanager
def _opened(files: list[Path], mapped: Mapped | None = None) -> Iterator[LazyStateDict]:
    """The shards' tensors as slices read with ``pread``; the names ``mapped`` picks (given
    every name) are served from a memory map of their file instead, which transformers keeps
    them as views into."""
    from safetensors import safe_open

    handles: list[Any] = []
    try:
        opened: list[tuple[Path, Any, list[str]]] = []
        for path in files:
            handle: Any = safe_open(str(path), framework="pt", device="cpu", backend="pread")
            handles.append(handle)
            opened.append((path, handle, list(handle.keys())))
        keep = set(mapped([n for _, _, names in opened for n in names])) if mapped else set()
        state = LazyStateDict()
        for path, handle, names in opened:
            view: Any = None
            if keep.intersection(names):
                view = safe_open(str(path), framework="pt", device="cpu")
                handles.append(view)
            for key in names:
                state[key] = (view if key in keep else handle).get_slice(key)
        yield state
    finally:
        for handle in handles:
            handle.__exit__(None, None, None)


def model_class(task: Task | str, config: Any) -> Any | None:
    """The class the task's Auto class would instantiate for ``config``; None if unmapped."""
    mapping = auto_class(task)._model_mapping
    try:
        return mapping[type(config)]
    except KeyError:
        return None


def _streamable(model_dir: Path) -> list[Path] | None:
    """The shards to stream, or None: the model ships its own code (left to from_pretrained
    under ``trust_remote_code``) or its weights are not safetensors."""
    return None if remote_code(model_dir) else shard_files(model_dir)


def load_streamed(
    task: Task | str,
    model_dir: Path,
    *,
    trust_remote_code: bool,
    mapped: Mapped | None = None,
    **kwargs: Any,
) -> Any:
    """``auto_class(task).from_pretrained(model_dir, **kwargs)`` for a model the method will
    transform: quantized while it loads (``kwargs`` carry a ``quantization_config``) or
    calibrated after (GPTQ, AWQ replace every Linear's weight). The shards are streamed when
    they can be, and the heap is trimmed while it runs."""
    with trimming_heap(slack_for(weights_size(model_dir))):
        files = _streamable(model_dir)
        cls = None
        config = None
        if files is not None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
            cls = model_class(task, config)
        if cls is None:
            log.info("loading %s from its path (not streamed)", model_dir)
            return auto_class(task).from_pretrained(
                str(model_dir), trust_remote_code=trust_remote_code, **kwargs
            )
        assert files is not None
        with _opened(files, mapped) as state:
            model = cls.from_pretrained(None, config=config, state_dict=state, **kwargs)
        # What a path load records: libraries that look for the model's files (llm-compressor
        # reads the processor from it) find them instead of asking the Hub for "".
        model.config.name_or_path = model.name_or_path = str(model_dir)
        _attach_generation_config(model, model_dir)
        return model


def _attach_generation_config(model: Any, model_dir: Path) -> None:
    """What ``from_pretrained`` reads from a path besides the weights: the generation config."""
    if not (model_dir / "generation_config.json").is_file() or not hasattr(
        model, "generation_config"
    ):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        log.warning("generation_config.json not attached: %s", exc)
