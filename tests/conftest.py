"""Shared fixtures. Each area keeps its fixtures in a module under tests/fixtures/."""

from __future__ import annotations

import os

# Nothing may be downloaded at test time: every model is built locally or ships in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = [
    "tests.fixtures.models",
    "tests.fixtures.storage",
    "tests.fixtures.observability",
    "tests.fixtures.cluster",
    "tests.fixtures.operator",
    "tests.fixtures.tools",
]
