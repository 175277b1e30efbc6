"""GPTQ and AWQ through llm-compressor's ``oneshot`` (the maintained successor route to the
archived auto-gptq).

Both calibrate on the request's texts, quantize every ``Linear`` but the LM head, and save a
compressed-tensors checkpoint (``save_compressed=True``): the files on disk hold the packed
low-bit weights. The model is calibrated offloaded to disk (:func:`load_offloaded`): no
device, the host included, holds the model whole (one decoder layer is onloaded at a time).
transformers reloads the artifact with plain ``from_pretrained``; on CPU the
compressed-tensors integration decompresses the weights into ordinary ``Linear`` layers,
which is what evaluation runs (the on-disk size is still the compressed one).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from kubequant_api.constants import Task
from optimizer_job import loading
from optimizer_job.heap import trimming_heap
from optimizer_job.methods._common import (
    finish_artifact,
    library_errors,
    release,
    source_dtype,
    timed,
)
from optimizer_job.methods.base import (
    ArtifactInfo,
    IncompatibleError,
    InferenceModel,
    QuantizationMethod,
    QuantizeRequest,
    register,
)
from optimizer_job.streamed import load_streamed, shard_files

CALIBRATION_FIELD = "spec.calibration"
GROUP_SIZE_FIELD = "spec.params.groupSize"

# The saved artifact's shards: a 16th of the source checkpoint, within 32 MiB-5 GiB.
# transformers saves an offloaded model shard by shard, reading back from disk only the
# tensors of the shard it writes, so the shard size bounds the save's memory.
SAVE_SHARD_DIVISOR = 16
SAVE_SHARD_MIN_BYTES = 32 * 1024**2
SAVE_SHARD_MAX_BYTES = 5 * 1024**3


def _calibration_dataset(
    tokenizer: Any, texts: Sequence[str], sequence_length: int, name: str
) -> Any:
    from datasets import Dataset

    samples = [t for t in texts if t.strip()]
    if not samples:
        raise IncompatibleError(
            CALIBRATION_FIELD, f"method {name} needs calibration texts and none were given"
        )
    encoded = tokenizer(
        samples, truncation=True, max_length=sequence_length, add_special_tokens=True
    )
    rows = [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        if len(ids) >= 2
    ]
    if not rows:
        raise IncompatibleError(CALIBRATION_FIELD, "every calibration text tokenized to < 2 tokens")
    return Dataset.from_list(rows)


def _check_group_size(model: Any, group_size: int) -> None:
    import torch

    if group_size <= 0:
        return
    head = model.get_output_embeddings()
    for fqn, module in model.named_modules():
        linear = isinstance(module, torch.nn.Linear) and module is not head
        if linear and module.in_features % group_size:
            raise IncompatibleError(
                GROUP_SIZE_FIELD,
                f"layer {fqn} has {module.in_features} input features, not a multiple of "
                f"groupSize {group_size}",
            )


def _head_names(model: Any) -> list[str]:
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules() if head is not None and module is head]


@contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its CPU activation cache (``Tensor.pin_memory``) before
    each smoothing grid search, which raises "Cannot access accelerator device when none is
    available" on a CPU-only torch. Pinning only speeds up host-to-device copies, so with no
    accelerator the pin is skipped for the duration of the call (and restored after)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory

    def skip_pin(self: Any, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    IntermediatesCache.pin_memory = skip_pin  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


@contextmanager
def _fx_wraps_dropped() -> Iterator[None]:
    """Drop the ``torch.fx.wrap`` registrations made inside the block.

    llm-compressor's sequential pipeline traces the model with code it generates, and
    ``torch.fx.wrap`` registers that code's globals (which hold the model) in a module-level
    table that nothing ever clears: without this the calibrated model outlived the method,
    through the artifact's evaluation (measured at 0.1B: 0.95x the checkpoint left after the
    save)."""
    from torch.fx import _symbolic_trace

    registry = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    before = set(registry) if isinstance(registry, dict) else None
    try:
        yield
    finally:
        if isinstance(registry, dict) and before is not None:
            for key in [k for k in registry if k not in before]:
                del registry[key]


def save_shard_bytes(checkpoint_bytes: int) -> int:
    """``max_shard_size`` of the artifact of a ``checkpoint_bytes`` source."""
    scaled = checkpoint_bytes // SAVE_SHARD_DIVISOR
    return min(max(scaled, SAVE_SHARD_MIN_BYTES), SAVE_SHARD_MAX_BYTES)


def load_offloaded(task: Task, source_dir: Path, dtype: Any, folder: Path) -> Any | None:
    """The model with every weight left on disk, or None when it cannot be (the weights are
    not safetensors, or the model ships its own code).

    compressed-tensors' offloading (``load_offloaded_model``, ``device_map={"": "disk"}``)
    keeps each tensor where it is, a key in a source shard, and holds a meta tensor in its
    place; llm-compressor's sequential pipeline onloads one decoder layer to the device
    (the accelerator, or the host), calibrates it, and writes the quantized weights back as
    new files under ``folder``. Nothing holds the whole model: measured at 0.1B on CPU, the
    calibration and save peaked at 1.1x the checkpoint above the imports against 1.7x with
    the model on the host, and the saved artifact was byte-identical."""
    if loading.remote_code(source_dir) or shard_files(source_dir) is None:
        return None
    from compressed_tensors.offload import load_offloaded_model

    cls = loading.auto_class(task)
    with load_offloaded_model(cls):
        return cls.from_pretrained(
            str(source_dir), dtype=dtype, device_map={"": "disk"}, offload_folder=str(folder)
        )


def _drop_tensors(model: Any) -> None:
    """Empty every parameter and buffer of a saved model in place.

    After ``oneshot`` the frames of its sequential pipeline (the traced forward, the pipeline,
    ``oneshot`` itself) stay reachable and hold the model object, so dropping our reference
    would not free it (measured at 0.1B: 0.95x the checkpoint still resident after the save,
    through the artifact's evaluation). Emptied, whatever keeps the object keeps no weights."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


class _LlmCompressor(QuantizationMethod):
    load_requires = ("compressed-tensors",)

    def _recipe(self, params: Any, ignore: list[str]) -> Any:
        raise NotImplementedError

    def _group_size(self, params: Any) -> int:
        return int(params.group_size)

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        # llm-compressor logs through loguru at INFO; keep the engine's JSON logs readable.
        logging.getLogger("llmcompressor").setLevel(logging.WARNING)
        request.progress(5)
        tokenizer = loading.load_tokenizer(request.source_dir, request.trust_remote_code)
        dataset = _calibration_dataset(
            tokenizer, request.calibration, request.sequence_length, self.name
        )
        # In the checkpoint's dtype, never whole on one device: oneshot's "independent"
        # pipeline gives each modifier the pipeline it infers, "sequential" for GPTQ and AWQ,
        # which onloads one decoder layer at a time to the accelerator (or the host) and keeps
        # the activations between layers on the host; the weights wait on disk, in the source
        # shards and then in this folder (next to the artifact's, on the work volume).
        offload = Path(tempfile.mkdtemp(prefix="offload-", dir=request.out_dir.parent))
        try:
            return self._calibrate(request, task, tokenizer, dataset, offload)
        finally:
            shutil.rmtree(offload, ignore_errors=True)

    def _calibrate(
        self, request: QuantizeRequest, task: Task, tokenizer: Any, dataset: Any, offload: Path
    ) -> ArtifactInfo:
        with library_errors(self.name, "loading the model"):
            dtype = source_dtype(request)
            model = load_offloaded(task, request.source_dir, dtype, offload)
            offloaded = model is not None
            if model is None:
                # On the host, streamed (optimizer_job.streamed): calibration replaces every
                # Linear's weight, and a weight that was a view into a mapped shard would
                # leave the shard's pages resident beside its replacement.
                model = load_streamed(
                    task,
                    request.source_dir,
                    dtype=dtype,
                    trust_remote_code=request.trust_remote_code,
                )
        _check_group_size(model, self._group_size(request.params))
        ignore = _head_names(model)
        request.progress(15)
        from llmcompressor.core import create_session

        # A session of its own: the global one would keep the model (and what the modifiers
        # hold) alive after the save, through the artifact's evaluation and the next candidate.
        with create_session(), _fx_wraps_dropped():
            with (
                library_errors(self.name, "calibration and quantization"),
                timed(self.name, "oneshot"),
                # On the host, the smallest slack (optimizer_job.heap): calibration frees a
                # module's temporaries, not a model's worth of tensors. Offloaded, no trim:
                # each layer's onload reuses the last one's freed pages (measured at 0.5B:
                # 0.41x the checkpoint without trims, 0.28x with, 16% slower; the run's
                # peak is the original model's measurement, 1.0x).
                nullcontext() if offloaded else trimming_heap(),
            ):
                from llmcompressor.entrypoints.oneshot import oneshot

                with _no_pinning_without_accelerator():
                    oneshot(
                        model=model,
                        tokenizer=tokenizer,
                        dataset=dataset,
                        recipe=self._recipe(request.params, ignore),
                        max_seq_length=request.sequence_length,
                        num_calibration_samples=len(dataset),
                        shuffle_calibration_samples=False,
                        pipeline="independent",
                        sequential_offload_device="cpu",
                    )
            request.progress(85)
            with (
                library_errors(self.name, "saving"),
                timed(self.name, "save"),
                trimming_heap(),
            ):
                model.save_pretrained(
                    str(request.out_dir),
                    save_compressed=True,
                    max_shard_size=save_shard_bytes(loading.weights_size(request.source_dir)),
                )
        if not offloaded:  # an offloaded model holds meta tensors: nothing to empty
            _drop_tensors(model)
        release(model)
        del model
        return finish_artifact(
            self.name,
            request,
            task,
            "compressed-tensors",
            extra={"library": "llmcompressor", "calibrationSamples": len(dataset)},
        )

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        with library_errors(self.name, "loading the artifact"):
            if device.startswith("cuda"):
                model = loading.auto_class(info.task).from_pretrained(
                    str(artifact_dir), **(loading.placement(device) or {"device_map": "cpu"})
                )
            else:
                model = _load_decompressed(info.task, artifact_dir)
        return loading.TorchInferenceModel(model, info.task, device)


def _load_decompressed(task: str, artifact_dir: Path) -> Any:
    """On the host, decompress the packed weights once while loading, from streamed files.

    There are no low-bit kernels on CPU: left compressed, every Linear decompresses its
    weight on its first forward and keeps the result beside the packed one (measured on a
    0.1B gptq artifact: 1.8x the source checkpoint after one forward, 1.35x decompressed at
    load, the same logits). Streamed (:mod:`optimizer_job.streamed`), the packed weights'
    file pages do not stay mapped beside the decompressed ones. What is not packed (the
    embeddings, the LM head, the norms) stays mapped, as transformers' own load from the
    path keeps it: a forward reads a few rows of the embedding table, which read into memory
    whole was 0.23x of the 0.1B checkpoint."""
    from transformers.utils.quantization_config import CompressedTensorsConfig

    return load_streamed(
        task,
        artifact_dir,
        trust_remote_code=False,
        mapped=unpacked,
        device_map="cpu",
        quantization_config=CompressedTensorsConfig(run_compressed=False),
    )


def unpacked(names: list[str]) -> set[str]:
    """The tensors of a compressed-tensors checkpoint that belong to no module stored packed
    (``<module>.weight_packed``): the embeddings, the LM head, the norms."""
    packed = {n.rpartition(".")[0] for n in names if n.endswith(".weight_packed")}
    return {n for n in names if n.rpartition(".")[0] not in packed}


def _weight_scheme(bits: int, group_size: int, symmetric: bool, actorder: str | None = None) -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=symmetric,
        strategy="group" if group_size > 0 else "channel",
        group_size=group_size if group_size > 0 else None,
        actorder=actorder,
    )
    return QuantizationScheme(targets=["Linear"], weights=weights)


@register
class Gptq(_LlmCompressor):
    name = "gptq"

    def _recipe(self, params: Any, ignore: list[str]) -> Any:
        from llmcompressor.modifiers.quantization import GPTQModifier

        scheme = _weight_scheme(
            int(params.bits),
            int(params.group_size),
            bool(params.sym),
            "weight" if params.desc_act else None,
        )
        return GPTQModifier(config_groups={"group_0": scheme}, ignore=ignore)


@register
class Awq(_LlmCompressor):
    name = "awq"

    def _recipe(self, params: Any, ignore: list[str]) -> Any:
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        scheme = _weight_scheme(int(params.bits), int(params.group_size), symmetric=False)
        return [
            AWQModifier(duo_scaling=True),
            QuantizationModifier(config_groups={"group_0": scheme}, ignore=ignore),
        ]
