"""The ModelOptimization API shared by kubequant's operator and engine (no heavy imports)."""

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubequant_api.errors import InvalidSpecError, KubequantError

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "InvalidSpecError",
    "KubequantError",
]
