"""Quantization methods; importing this package registers every one of them.

Each module holds one method family and imports its quantization library lazily, inside
``quantize``/``load``, so importing the package (and listing the registry) stays cheap.
"""

from optimizer_job.methods import (  # noqa: F401  (imported for @register)
    bnb_methods,
    llmcompressor_methods,
    onnx_methods,
    quanto_methods,
    torchao_methods,
)
from optimizer_job.methods.base import registry

__all__ = ["registry"]
