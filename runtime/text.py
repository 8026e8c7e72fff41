"""Tokenize texts (CLIP BPE, as the reference dataloader) and run the bundle's text encoder.

Over-long texts are truncated the way the reference tokenizer does: ``[SOT] + tokens[:max_words-2]
+ [EOT]`` (``ucofia.data.tokenizer``); ``tokenize`` reports which texts were cut so the CLI can say
so. Empty texts are errors naming the text's number. Token ids are checked against the text
encoder's vocabulary before it runs (``runtime.vocabulary``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from runtime.backends import open_session
from runtime.bundle import Bundle
from runtime.errors import BundleError, QueryError
from runtime.finite import NON_FINITE_FIX, non_finite_rows
from runtime.scoring import TextFeatures
from runtime.vocabulary import check_token_ids, text_vocab_size

# Texts per text-encoder call.
TEXT_BATCH = 256
# Truncated texts named one by one in the warning; more are counted.
TRUNCATED_SHOWN = 10

logger = logging.getLogger(__name__)


@dataclass
class Tokenized:
    """Token ids [T, max_words] (zero-padded) and the 1-based numbers of truncated texts."""

    ids: np.ndarray
    truncated: list[int] = field(default_factory=list)


class TextEncoder:
    """Tokenizer + text-encoder graph of one bundle."""

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int | None = None) -> None:
        from ucofia.data.tokenizer import ClipTokenizer

        self.bundle = bundle
        self.max_words = bundle.tokenizer.max_words
        self.tokenizer = ClipTokenizer(bundle.tokenizer.vocab_file)
        if (self.tokenizer.sot_id, self.tokenizer.eot_id) != (bundle.tokenizer.sot_id, bundle.tokenizer.eot_id):
            raise BundleError(f"{bundle.root}/manifest.json: tokenizer sot_id/eot_id "
                              f"({bundle.tokenizer.sot_id}, {bundle.tokenizer.eot_id}) differ from the vocabulary's "
                              f"({self.tokenizer.sot_id}, {self.tokenizer.eot_id}); re-export the bundle")
        self.vocab_size = text_vocab_size(bundle)
        # Idle intra-op threads sleep instead of spinning: every caller runs the scorer's tile threads
        # in the same process right after encoding, and the encoder's spinning threads took cores from
        # them (benchmarks/serve_stages.py: encode + search of a batch faster and cheaper without it).
        self.session = open_session(bundle, "text_encoder", backend, threads, spinning=False)

    def tokenize(self, texts: list[str], what: str = "query", first_number: int = 1,
                 report_truncation: bool = True) -> Tokenized:
        """Token ids of ``texts``; raises QueryError naming the first empty or token-less text."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise QueryError(f"{what} {first_number + i} is empty; give it some text")
        try:
            ids, _ = self.tokenizer.tokenize(texts, self.max_words)
        except ValueError as exc:
            raise QueryError(f"{what}s starting at number {first_number}: {exc}") from None
        truncated = []
        if report_truncation:
            keep = self.max_words - 2
            truncated = [first_number + i for i, t in enumerate(texts) if len(self.tokenizer.encode(t)) > keep]
        return Tokenized(ids, truncated)

    def encode_ids(self, ids: np.ndarray, what: str = "query", first_number: int = 1) -> TextFeatures:
        """Run the text encoder over token ids [T, L] in batches; raises QueryError naming the texts
        (``what`` and 1-based numbers from ``first_number``) whose features are not finite, and a
        one-line error (``check_token_ids``) for ids outside the encoder's vocabulary."""
        check_token_ids(np.asarray(ids), self.vocab_size, self.bundle.root, what, first_number)
        parts = []
        for start in range(0, len(ids), TEXT_BATCH):
            out = self.session.run({"input_ids": ids[start:start + TEXT_BATCH]})
            bad = np.flatnonzero(non_finite_rows([out["sentence"], out["words"]]))
            if len(bad):
                numbers = ", ".join(str(first_number + start + int(i)) for i in bad[:10])
                raise QueryError(f"the text encoder produced non-finite features (NaN/inf) for {what} {numbers}; "
                                 f"{NON_FINITE_FIX}")
            parts.append(TextFeatures(out["sentence"], out["words"]))
        return TextFeatures.concat(parts)

    def encode_reporting(self, texts: list[str], what: str = "query") -> TextFeatures:
        """Tokenize and encode ``texts`` as :meth:`encode` does, with a warning naming the texts
        longer than ``max_words`` tokens (cut as the reference tokenizer cuts them)."""
        tokens = self.tokenize(texts, what)
        warn_truncated(tokens.truncated, self.max_words, what)
        return self.encode_ids(tokens.ids, what)

    def encode(self, texts: list[str], what: str = "query", first_number: int = 1) -> TextFeatures:
        """Tokenize and encode ``texts`` (see ``tokenize`` and ``encode_ids`` for errors)."""
        return self.encode_ids(self.tokenize(texts, what, first_number, report_truncation=False).ids,
                               what, first_number)


def warn_truncated(numbers: list[int], max_words: int, what: str) -> None:
    """A warning naming the texts (1-based ``numbers``) cut to ``max_words`` tokens."""
    if not numbers:
        return
    shown = ", ".join(map(str, numbers[:TRUNCATED_SHOWN])) + (" ..." if len(numbers) > TRUNCATED_SHOWN else "")
    logger.warning("%d %s(s) longer than %d tokens were truncated to max_words=%d (SOT + %d tokens + EOT, as the "
                   "reference tokenizer does): %s %s", len(numbers), what, max_words - 2, max_words, max_words - 2,
                   what, shown)
