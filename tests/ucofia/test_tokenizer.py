"""CLIP BPE tokenizer: same ids as the reference SimpleTokenizer (fixture) and open_clip (live)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from data_paths import REPO_ROOT, TEST_FIXTURES

from ucofia.config import UCoFiAConfig
from ucofia.data import tokenizer as tokmod
from ucofia.data.tokenizer import ClipTokenizer, VocabNotFoundError, find_vocab_file

FIXTURE = TEST_FIXTURES / "tokenizer" / "expected_ids.json"
REPO = REPO_ROOT


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    try:
        return ClipTokenizer()
    except VocabNotFoundError as exc:  # pragma: no cover - open_clip_torch is a dependency
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_the_corpus(expected):
    texts = [c["text"] for c in expected["cases"]]
    assert len(texts) >= 60
    assert any(len(c["encode"]) > expected["max_words"] for c in expected["cases"])  # truncation
    assert any("&amp;" in t for t in texts) and any(any(ord(ch) > 0x3000 for ch in t) for t in texts)


def test_special_ids_and_vocab(tok, expected):
    assert tok.sot_id == expected["sot_id"] == 49406
    assert tok.eot_id == expected["eot_id"] == 49407
    assert tok.vocab_size == UCoFiAConfig().clip.vocab_size == 49408
    assert tok.vocab_path.name == "bpe_simple_vocab_16e6.txt.gz" and tok.vocab_path.is_file()


def test_identical_to_reference_fixture(tok, expected):
    max_words = expected["max_words"]
    texts = [c["text"] for c in expected["cases"]]
    ids, mask = tok.tokenize(texts, max_words)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (len(texts), max_words)
    for row, case in enumerate(expected["cases"]):
        assert ids[row].tolist() == case["input_ids"], case["text"]
        assert mask[row].tolist() == case["attention_mask"], case["text"]
        assert tok.encode(case["text"]) == case["encode"], case["text"]


def test_identical_to_open_clip(tok, expected):
    open_clip = pytest.importorskip("open_clip")
    # Special-token literals are the one documented difference (the reference maps
    # "<|startoftext|>" to SOT; open_clip spells its special tokens differently).
    texts = [c["text"] for c in expected["cases"] if "<|" not in c["text"]]
    assert all(c["open_clip_agrees"] for c in expected["cases"] if "<|" not in c["text"])
    oc = open_clip.tokenizer.SimpleTokenizer()
    for max_words in (8, UCoFiAConfig().max_words, 77):
        want = open_clip.tokenize(texts, context_length=max_words).numpy()
        ids, mask = tok.tokenize(texts, max_words)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(mask, (want != 0).astype(np.int64))
    for text in texts:
        assert tok.encode(text) == oc.encode(text), text


def test_truncation_and_padding(tok):
    max_words = UCoFiAConfig().max_words
    ids, mask = tok.tokenize(["word " * 100, "a dog"], max_words)
    assert ids[0, 0] == tok.sot_id and ids[0, -1] == tok.eot_id and mask[0].all()
    assert ids[0, 1:-1].tolist() == tok.encode("word " * 100)[: max_words - 2]
    assert ids[1, :4].tolist() == [tok.sot_id, *tok.encode("a dog"), tok.eot_id]
    assert not ids[1, 4:].any() and mask[1].tolist() == [1] * 4 + [0] * (max_words - 4)


def test_single_string_and_digits(tok):
    ids, _mask = tok.tokenize("in 2016", 6)
    assert ids.shape == (1, 6)
    # digits are single tokens
    assert len(tok.encode("2016")) == 4 and tok.decode(tok.encode("Hello  World")) == "hello world "


@pytest.mark.parametrize("bad", ["", "   ", "\t\n", "\u00a0"])
def test_empty_caption_raises_with_index(tok, bad):
    with pytest.raises(ValueError, match=r"caption 2 is empty"):
        tok.tokenize(["ok", "fine", bad], 32)


@pytest.mark.parametrize("bad", [None, float("nan"), 3])
def test_non_string_caption_raises_with_index(tok, bad):
    with pytest.raises(ValueError, match=r"caption 1 is not a string"):
        tok.tokenize(["ok", bad], 32)


def test_bad_max_words(tok):
    with pytest.raises(ValueError, match="max_words"):
        tok.tokenize(["ok"], 1)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        ClipTokenizer(tmp_path / "nope.txt.gz")


def test_corrupt_vocab_files(tmp_path):
    not_gzip = tmp_path / "plain.txt.gz"
    not_gzip.write_text("this is not gzip")
    with pytest.raises(ValueError, match="unreadable"):
        ClipTokenizer(not_gzip)
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt") as fh:
        fh.write("#version\na b\nc d\n")
    with pytest.raises(ValueError, match="merge lines"):
        ClipTokenizer(short)


def test_vocab_not_found_without_open_clip(monkeypatch):
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VocabNotFoundError, match="pip install open_clip_torch"):
        find_vocab_file()


def test_import_is_torch_free():
    code = ("import sys; from ucofia.data.tokenizer import ClipTokenizer; t = ClipTokenizer(); "
            "t.tokenize(['a dog'], 32); "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
