"""CLIP byte-level BPE tokenizer without torch (same ids as the reference SimpleTokenizer).

Pipeline (reference MSR-VTT dataloader, ``max_words`` = ``UCoFiAConfig.max_words``):

* clean: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse runs of ``\\s`` (the ``regex``
  module's Unicode ``\\s``, as the reference does) to one space, lowercase;
* split with the CLIP pattern (``'s 't 're 've 'm 'll 'd``, letter runs, single digits, runs of
  other non-space characters; the literal strings ``<|startoftext|>`` / ``<|endoftext|>`` are
  kept whole and map to SOT / EOT, as in the reference);
* map every UTF-8 byte to a printable character, then apply the BPE merges by rank;
* ``tokenize``: ``[SOT] + tokens[:max_words - 2] + [EOT]``, zero-padded to ``max_words``; the
  attention mask is 1 on SOT, the tokens and EOT.

Differences from the reference, on purpose: an empty or whitespace-only caption raises
``ValueError`` naming its index (the reference would silently encode it as ``[SOT, EOT]``), and so
does a caption that is not a string (e.g. a NaN from a spreadsheet).

The vocabulary is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (identical to OpenAI CLIP's and the
reference's), found through ``importlib.util.find_spec('open_clip')`` without importing open_clip
(which would import torch).
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# Merges used by CLIP: the file's first line is a header; CLIP keeps 49152 - 256 - 2 merges.
_NUM_MERGES = 49152 - 256 - 2
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""")
_CACHE_LIMIT = 200_000

__all__ = ["VOCAB_FILENAME", "ClipTokenizer", "clean_text", "find_vocab_file"]


class VocabNotFoundError(FileNotFoundError):
    """The CLIP BPE vocabulary file could not be located."""


def find_vocab_file() -> Path:
    """Path of open_clip's ``bpe_simple_vocab_16e6.txt.gz``, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise VocabNotFoundError(
        f"CLIP BPE vocabulary {VOCAB_FILENAME} not found{where}: install open_clip_torch "
        "(`pip install open_clip_torch`) or pass ClipTokenizer(vocab_path=...) pointing at the file "
        "(an exported ucofia bundle contains a copy)")


@lru_cache(maxsize=1)
def _byte_to_char() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (GPT-2 / CLIP)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _regexes():
    import regex

    return regex.compile(_PATTERN, regex.IGNORECASE), regex.compile(r"\s+")


def clean_text(text: str) -> str:
    """ftfy fix, double HTML unescape, whitespace collapse, lowercase (the reference's cleaning)."""
    import ftfy

    _, whitespace = _regexes()
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = whitespace.sub(" ", text).strip()
    return text.lower()


class ClipTokenizer:
    """CLIP BPE tokenizer (vocabulary 49408, SOT 49406, EOT 49407) without torch."""

    def __init__(self, vocab_path: str | Path | None = None):
        self.vocab_path = Path(vocab_path) if vocab_path is not None else find_vocab_file()
        merges = self._read_merges(self.vocab_path)
        byte_chars = list(_byte_to_char().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self._ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._byte_enc = _byte_to_char()
        self._byte_dec = {c: b for b, c in self._byte_enc.items()}
        self._cache: dict[str, tuple[int, ...]] = {}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(self.encoder)

    @staticmethod
    def _read_merges(path: Path) -> list[tuple[str, str]]:
        if not path.is_file():
            raise VocabNotFoundError(f"CLIP BPE vocabulary not found: {path}; pass the path of "
                                     f"{VOCAB_FILENAME} (shipped with open_clip_torch)")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                lines = fh.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(f"CLIP BPE vocabulary {path} is unreadable ({exc}); it must be the gzip "
                             f"file {VOCAB_FILENAME} from open_clip_torch") from None
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"CLIP BPE vocabulary {path} has {len(merges)} usable merge lines, "
                             f"expected {_NUM_MERGES} pairs; use {VOCAB_FILENAME} from open_clip_torch")
        return merges  # type: ignore[return-value]

    # ---- BPE ---------------------------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised piece (already byte-mapped)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        if piece in (SOT_TOKEN, EOT_TOKEN):
            ids: tuple[int, ...] = (self.encoder[piece],)
        else:
            symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
            ranks = self._ranks
            while len(symbols) > 1:
                best_rank, best = None, None
                for pair in itertools.pairwise(symbols):
                    r = ranks.get(pair)
                    if r is not None and (best_rank is None or r < best_rank):
                        best_rank, best = r, pair
                if best is None:
                    break
                first, second = best
                merged: list[str] = []
                i = 0
                n = len(symbols)
                while i < n:  # merge every occurrence, left to right, without overlap
                    if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(symbols[i])
                        i += 1
                symbols = merged
            ids = tuple(self.encoder[s] for s in symbols)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    # ---- public API --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning (no SOT/EOT, no truncation)."""
        pattern, _ = _regexes()
        out: list[int] = []
        enc = self._byte_enc
        for piece in pattern.findall(clean_text(text)):
            out.extend(self._bpe("".join(enc[b] for b in piece.encode("utf-8"))))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (cleaned and lowercased; each word followed by a space)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self._byte_dec[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | Sequence[str], max_words: int) -> tuple[np.ndarray, np.ndarray]:
        """``[SOT] + tokens[:max_words-2] + [EOT]``, zero-padded: (input_ids, attention_mask) int64 [T, L].

        Raises ``ValueError`` naming the caption index for an empty / whitespace-only caption or a
        value that is not a string.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(max_words, (int, np.integer)) or max_words < 2:
            raise ValueError(f"max_words must be an integer >= 2 (room for SOT and EOT), got {max_words!r}")
        texts = list(texts)
        ids = np.zeros((len(texts), int(max_words)), dtype=np.int64)
        mask = np.zeros((len(texts), int(max_words)), dtype=np.int64)
        keep = int(max_words) - 2
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"caption {row} is not a string ({type(text).__name__}: {text!r}); "
                                 "fix or drop it in the annotation file")
            if not text.strip():
                raise ValueError(f"caption {row} is empty or whitespace only ({text!r}); "
                                 "fix or drop it in the annotation file")
            tokens = self.encode(text)
            if not tokens:
                raise ValueError(f"caption {row} ({text!r}) has no tokens after cleaning; "
                                 "fix or drop it in the annotation file")
            seq = [self.sot_id] + tokens[:keep] + [self.eot_id]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return ids, mask

    def __call__(self, texts: str | Sequence[str], max_words: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenize(texts, max_words)
