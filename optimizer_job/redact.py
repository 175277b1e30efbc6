"""The engine's one secret scrubber: nothing it emits (logs, messages, the termination
message, metrics, status) carries a credential.

Two layers: credentials embedded in URLs (``scheme://user:password@host``) are masked, and the
values of secret-looking environment variables (the keys of the Secrets the pod receives
through ``envFrom``: ``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``...) are replaced by ``***``.

- :func:`redact` shows one URI: without its userinfo and without its query string (which may
  carry a signature); ``hf://repo@revision`` keeps its revision.
- :func:`scrub` cleans free text (an exception's message, a log line): URL userinfo wherever
  it appears, then every secret environment value, longest first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Environment variable names whose values are treated as secrets (KEY covers ACCESS_KEY,
# PRIVATE_KEY, API_KEY...).
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY|AUTH)", re.I)
# Values shorter than this are not scrubbed from free text (too many false positives).
_MIN_SECRET_LEN = 6
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z0-9+.-]+://)(?P<userinfo>[^/\s@]+)@")
_LEADING_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z0-9+.-]+://)[^/\s@]+@")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def _mask_userinfo(text: str) -> str:
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def redact(uri: str) -> str:
    """The URI without userinfo or query string (``s3://***@bucket/p``)."""
    bare = uri.split("?", 1)[0]
    if bare.startswith("hf://"):  # hf://repo@revision: the @ is a revision, not userinfo
        return bare
    return _mask_userinfo(bare)


def strip_userinfo(uri: str) -> str:
    """The URI without its userinfo (``s3://key:secret@bucket/p`` -> ``s3://bucket/p``)."""
    return _LEADING_USERINFO.sub(r"\g<scheme>", uri)


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, username, password)``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, parts.username, parts.password


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with URL credentials and secret environment values masked."""
    out = _mask_userinfo(text)
    for value in secret_values() if secrets is None else secrets:
        if value in out:
            out = out.replace(value, MASK)
    return out


def scrub_obj(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a JSON-like structure with every string scrubbed."""
    values = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return scrub(obj, values)
    if isinstance(obj, Mapping):
        return {str(k): scrub_obj(v, values) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_obj(v, values) for v in obj]
    return obj
