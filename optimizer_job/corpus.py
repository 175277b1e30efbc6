"""A built-in English text corpus that needs no download and ships no data.

The engine uses it as the default calibration and evaluation data when a spec names no
dataset, and the test fixtures train a small causal LM on it. It is assembled at run time
from the docstrings of a fixed list of pure-Python standard-library modules and from the
language reference topics that ship with ``pydoc``: real English prose about programming,
cleaned into paragraph-sized samples (code examples, doctests, tables and reStructuredText
markup are dropped). The order and content are deterministic for a given Python version;
:func:`corpus_digest` identifies the exact text.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import re
import warnings
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

# Pure-Python modules with long, prose-like docstrings. Order matters (it fixes the corpus).
_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures",
    "asyncio.locks", "asyncio.queues", "asyncio.streams", "asyncio.tasks", "base64", "bdb",
    "bisect", "calendar", "cmd", "codecs", "collections", "colorsys", "concurrent.futures._base",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "email.parser", "email.utils", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
    "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "http.cookiejar", "http.server", "imaplib", "inspect", "io", "ipaddress", "json",
    "json.decoder", "json.encoder", "logging", "logging.handlers", "mailbox", "mimetypes",
    "multiprocessing.managers", "multiprocessing.pool", "netrc", "numbers", "operator",
    "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform",
    "plistlib", "poplib", "pprint", "profile", "pstats", "py_compile", "pydoc", "queue",
    "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "turtle", "types", "typing", "unittest.case", "unittest.loader", "unittest.mock",
    "unittest.result", "unittest.runner", "unittest.suite", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom", "xml.etree.ElementTree",
    "xml.sax.handler", "zipfile", "zipimport",
)  # fmt: skip

MIN_WORDS = 12  # shorter paragraphs carry too little context to be useful samples
MAX_WORDS = 160  # longer ones are split at sentence ends
_MARKUP = re.compile(r":(?:func|class|meth|mod|attr|data|exc|const|obj|term|ref|pep):`~?([^`]*)`")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_LETTERS = re.compile(r"[A-Za-z]")


def _docstrings(source: str) -> Iterator[str]:
    """Docstrings of a module's source in source order: module, classes, functions, methods.

    Parsed from the source file rather than read from live objects, so the result does not
    depend on which other libraries were imported (some patch standard-library modules).
    """
    tree = ast.parse(source)
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        yield doc
    yield from _node_docstrings(tree.body)


def _node_docstrings(body: list[ast.stmt]) -> Iterator[str]:
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield doc
            if isinstance(node, ast.ClassDef):
                yield from _node_docstrings(node.body)


def _module_source(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        return Path(spec.origin).read_text(encoding="utf-8")
    except OSError:
        return None


def _is_prose(line: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped.startswith((">>>", "...", "$ ", "#", "|", "+-", "==", "--")):
        return False
    if line.startswith((" " * 4, "\t")):  # indented: code, tables or argument lists
        return False
    letters = len(_LETTERS.findall(stripped))
    return letters >= 0.6 * len(stripped)


def _paragraphs(doc: str) -> Iterator[str]:
    text = inspect.cleandoc(doc)
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not all(_is_prose(line) for line in lines):
            continue
        para = " ".join(line.strip() for line in lines)
        para = _MARKUP.sub(r"\1", para).replace("``", "").replace("`", "")
        para = re.sub(r"\s+", " ", para).strip()
        if para.endswith("::"):
            para = para[:-1]
        yield para


def _split_long(para: str) -> Iterator[str]:
    words = para.split()
    if len(words) <= MAX_WORDS:
        yield para
        return
    chunk: list[str] = []
    for sentence in _SENTENCE_END.split(para):
        if chunk and len(" ".join([*chunk, sentence]).split()) > MAX_WORDS:
            yield " ".join(chunk)
            chunk = []
        chunk.append(sentence)
    if chunk:
        yield " ".join(chunk)


@lru_cache(maxsize=1)
def _build() -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _MODULES:
            source = _module_source(name)
            if source is None:  # a module missing from a slim Python build: skip it
                continue
            texts.extend(_docstrings(source))
        try:  # the language reference's topics, as `help()` shows them
            from pydoc_data import topics as pydoc_topics

            reference: dict[str, str] = dict(pydoc_topics.topics)
        except ImportError:  # pragma: no cover - slim Python builds drop pydoc_data
            reference = {}
        texts.extend(reference[key] for key in sorted(reference))
    for doc in texts:
        for para in _paragraphs(doc):
            for piece in _split_long(para):
                if len(piece.split()) < MIN_WORDS or piece in seen:
                    continue
                seen.add(piece)
                out.append(piece)
    return tuple(out)


def builtin_corpus() -> list[str]:
    """Paragraph-sized English samples (deterministic for a given Python version)."""
    return list(_build())


def corpus_digest(texts: Sequence[str] | None = None) -> str:
    """sha256 of the corpus text (of ``texts`` when given), to key caches on its content."""
    digest = hashlib.sha256()
    for text in builtin_corpus() if texts is None else texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _is_held_out(text: str, held_out_fraction: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32
    return bucket < held_out_fraction


def split_corpus(
    texts: Sequence[str] | None = None, held_out_fraction: float = 0.1
) -> tuple[list[str], list[str]]:
    """Deterministic (train, held_out) split of ``texts`` (default: the built-in corpus).

    Each sample goes to one side by a hash of its text, so the split does not depend on the
    order or the number of samples and a sample never moves between sides.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    source = builtin_corpus() if texts is None else list(texts)
    train = [t for t in source if not _is_held_out(t, held_out_fraction)]
    held_out = [t for t in source if _is_held_out(t, held_out_fraction)]
    return train, held_out
