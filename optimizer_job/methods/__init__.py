"""Quantization methods: one module per method family, each class registered by name.

Which module implements a method is its entry in the method table
(:mod:`kubequant_api.methods`); :func:`registry` and ``base.get_method`` import those
modules on demand. Each module imports its quantization library lazily, inside
``_quantize``/``load``, so importing a module (and listing the registry) stays cheap.
"""

from optimizer_job.methods.base import registry

__all__ = ["registry"]
