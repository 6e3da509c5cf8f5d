"""The text corpora (sab_mips/corpora.py), on small generated files only: never the installed packages, so the
tests run the same with or without `make data`."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from sab_mips import corpora
from sab_mips.corpora import (CORPORA, UNKNOWN_CHAR, UNKNOWN_ID, Vocabulary, load_corpus, load_text, split_text,
                              streams, window, windows_per_pass)
from sab_mips.errors import UserError

TEXT = "In the beginning God created the heaven and the earth.\nAnd the earth was without form; ñ é 漢字\n" * 3


def _write(tmp_path: Path, data: str | bytes, name: str = "text.txt") -> str:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def _user_error(match: str, call, *args, **kwargs) -> str:
    """The message of the UserError that ``call`` raises, checked against ``match`` and for being one line."""
    with pytest.raises(UserError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)  # the CLI prints it as one line
    return str(info.value)


# ------------------------------------------------------------------------------------------------ loading

def test_load_text_reads_utf8_as_is(tmp_path):
    text = "line one\r\nline two ✓\n"
    assert load_text(_write(tmp_path, text)) == text  # no newline translation


def test_missing_file(tmp_path):
    _user_error(r"no such file: .*nope\.txt \(named corpora: kjv, gcide\)", load_text, str(tmp_path / "nope.txt"))


def test_unknown_corpus_name_lists_the_valid_ones():
    _user_error(r"unknown corpus 'kjvv' .*valid corpora: kjv, gcide", load_text, "kjvv")


def test_directory(tmp_path):
    _user_error("is a directory", load_text, str(tmp_path))


def test_empty_file(tmp_path):
    _user_error("is empty", load_text, _write(tmp_path, b""))


def test_non_utf8_names_the_byte_offset(tmp_path):
    message = _user_error("is not UTF-8", load_text, _write(tmp_path, "abc".encode() + b"\x92" + "def".encode()))
    assert "byte 0x92 at byte offset 3" in message and "iconv" in message


@pytest.mark.parametrize("name", list(CORPORA))
def test_named_corpus_not_installed(monkeypatch, tmp_path, name):
    # Point both lookups at places where nothing is installed, whatever this machine has.
    monkeypatch.setattr(corpora, "KJV_PACKAGE", "sab-mips-no-such-distribution")
    monkeypatch.setattr(corpora, "GCIDE_PATH", tmp_path / "absent.dict.dz")
    message = _user_error(f"corpus '{name}' .* is not installed: install it with `make data`", load_text, name)
    assert CORPORA[name].install in message


def test_gcide_reads_the_dictzip_file_and_replaces_stray_bytes(monkeypatch, tmp_path):
    path = tmp_path / "gcide.dict.dz"
    path.write_bytes(gzip.compress(b"Apple\n   A fruit.\nmarket\x92s\n"))
    monkeypatch.setattr(corpora, "GCIDE_PATH", path)
    assert load_text("gcide") == "Apple\n   A fruit.\nmarket\ufffds\n"


def test_kjv_reader_joins_verse_texts_one_a_line(tmp_path):
    verses = [{"citation": "Genesis 1:1", "text": "In the beginning."},
              {"citation": "Genesis 1:2", "text": "And the earth."}]
    path = tmp_path / "kjv.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in verses), encoding="utf-8")
    assert corpora.read_kjv(path) == "In the beginning.\nAnd the earth.\n"


# ------------------------------------------------------------------------------------------------- splits

@pytest.mark.parametrize("n", [11, 20, 101, 1000, 12345])
def test_splits_are_contiguous_and_cover_the_text(n):
    text = "".join(chr(ord("a") + i % 26) for i in range(n))
    parts = split_text(text)
    assert list(parts) == ["train", "valid", "test"]
    assert "".join(parts.values()) == text
    assert len(parts["train"]) == n * 90 // 100 and len(parts["valid"]) == n * 95 // 100 - n * 90 // 100
    assert all(parts.values())


def test_text_too_short_to_split():
    _user_error("a text of 10 characters is too short .* valid split would be empty", split_text, "x" * 10)


# --------------------------------------------------------------------------------------------- vocabulary

def test_vocabulary_round_trip_and_unknown():
    vocab = Vocabulary.build("hello world")
    assert vocab.chars == " dehlorw" and len(vocab) == 9  # 8 characters and the unknown id
    ids = vocab.encode("hold")
    assert ids.dtype == torch.int64 and ids.shape == (4,) and (ids > 0).all()
    assert vocab.decode(ids) == "hold"
    unseen = vocab.encode("hex ✓")
    assert unseen.tolist()[2] == UNKNOWN_ID and unseen.tolist()[4] == UNKNOWN_ID
    assert vocab.decode(unseen) == f"he{UNKNOWN_CHAR} {UNKNOWN_CHAR}"


def test_vocabulary_handles_empty_text_and_non_bmp_characters():
    vocab = Vocabulary.build("a😀b")
    assert vocab.encode("").shape == (0,) and vocab.decode([]) == ""
    assert vocab.decode(vocab.encode("b😀a")) == "b😀a"


def test_decode_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        Vocabulary.build("ab").decode([3])


def test_vocabulary_json_round_trip():
    vocab = Vocabulary.build(TEXT)
    text = vocab.to_json()
    assert Vocabulary.from_json(text) == vocab
    assert Vocabulary.from_json(text).encode(TEXT).tolist() == vocab.encode(TEXT).tolist()


@pytest.mark.parametrize("data", [{"chars": "ba", "unknown_id": 0}, {"chars": "aa", "unknown_id": 0},
                                  {"chars": "ab", "unknown_id": 1}, {"chars": 3}, []])
def test_malformed_vocabulary(data):
    _user_error("malformed vocabulary", Vocabulary.from_json, json.dumps(data))


# ------------------------------------------------------------------------------------------------- corpus

def test_load_corpus_builds_the_vocabulary_from_the_training_split_only(tmp_path):
    text = "a" * 90 + "b" * 5 + "c" * 5  # 'b' only in valid, 'c' only in test
    corpus = load_corpus(_write(tmp_path, text))
    assert corpus.vocabulary.chars == "a"
    assert {name: ids.shape for name, ids in corpus.splits.items()} == {"train": (90,), "valid": (5,), "test": (5,)}
    assert (corpus.splits["valid"] == UNKNOWN_ID).all() and (corpus.splits["test"] == UNKNOWN_ID).all()


def test_load_corpus_with_a_saved_vocabulary(tmp_path):
    saved = Vocabulary.build("abc")
    corpus = load_corpus(_write(tmp_path, "c" * 30), vocabulary=saved)
    assert corpus.vocabulary is saved and (corpus.splits["train"] == 3).all()


# ------------------------------------------------------------------------------------------------ streams

def test_streams_are_contiguous_stretches_and_drop_the_remainder():
    ids = torch.arange(23)
    rows = streams(ids, batch=4)
    assert rows.shape == (4, 5) and rows.dtype == torch.int64
    assert rows[1].tolist() == [5, 6, 7, 8, 9]  # stream b = ids[b·L:(b+1)·L]
    assert torch.equal(rows.reshape(-1), ids[:20])  # the last 23 mod 4 = 3 dropped


def test_windows_cover_a_pass_with_targets_shifted_by_one():
    rows = streams(torch.arange(2 * 11), batch=2, width=3)  # L = 11
    count = windows_per_pass(rows.shape[1], 3)
    assert count == 3
    xs, ys = zip(*(window(rows, i * 3, 3) for i in range(count)))
    x, y = torch.cat(xs, dim=1), torch.cat(ys, dim=1)
    assert x.shape == y.shape == (2, 9)
    assert torch.equal(y, x + 1)  # the next character of every input
    assert torch.equal(x, rows[:, :9])


def test_window_past_the_end():
    rows = streams(torch.arange(10), batch=1, width=3)
    window(rows, 6, 3)  # ids 6..9: the last target is the last id
    with pytest.raises(ValueError, match="a window of 3 steps from step 7 needs ids up to index 10, .* 10 ids"):
        window(rows, 7, 3)


def test_split_shorter_than_one_window_names_the_sizes():
    message = _user_error("the valid split has 20 characters: 4 streams of 5 are shorter than one window of 5 steps",
                          streams, torch.arange(20), 4, 5, name="valid")
    assert "6 characters a stream, 24 in all" in message
    assert streams(torch.arange(20), 4, 4).shape == (4, 5)  # exactly one window fits


@pytest.mark.parametrize("batch, width", [(0, 1), (1, 0)])
def test_streams_reject_non_positive_sizes(batch, width):
    _user_error("need batch >= 1 and width >= 1", streams, torch.arange(10), batch, width)
