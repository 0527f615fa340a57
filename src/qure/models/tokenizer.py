"""A deterministic word-level tokenizer for the mini backbone.

It stands in for the ``bert-base-uncased`` WordPiece tokenizer that BLIP-2's Q-Former
uses (via LAVIS' ``init_tokenizer``): text goes through the same ``blip_caption``
cleaning, a ``[CLS]`` token is prepended, sequences are truncated and padded to 32
tokens and an attention mask marks the real tokens. The vocabulary is built from a
caption corpus, so the mini model needs no downloaded files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from qure.data.text import blip_caption

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS)

# Words, or single punctuation marks left over by ``blip_caption`` (commas, "?", "$"...).
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def pad_token_rows(rows: Sequence[Sequence[int]], pad_id: int, max_length: int,
                   padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows (each at most ``max_length`` long) as padded ids and attention mask,
    both ``long`` [B, L]: L = ``max_length`` with ``padding="max_length"``, the longest
    row with ``"longest"``."""
    if padding == "max_length":
        length = max_length
    elif padding == "longest":
        length = max((len(r) for r in rows), default=1)
    else:
        raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def split_words(text: str) -> list[str]:
    """Clean ``text`` as BLIP does and split it into word/punctuation tokens."""
    return _TOKEN.findall(blip_caption(text))


class WordTokenizer:
    """Word-level tokenizer with ``[PAD]=0``, ``[UNK]=1``, ``[CLS]=2``.

    The vocabulary order is fixed by the corpus alone: words by descending frequency,
    ties broken alphabetically, so two builds from the same captions are identical.
    """

    def __init__(self, words: Sequence[str], max_length: int = 32):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        duplicates = sorted(w for w, n in Counter(words).items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate vocabulary words: {duplicates[:5]}")
        clash = set(words) & set(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"vocabulary words clash with special tokens: {sorted(clash)}")
        self.words: list[str] = list(words)
        self.max_length = max_length
        self.itos: list[str] = [*SPECIAL_TOKENS, *self.words]
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}

    pad_id = 0
    unk_id = 1
    cls_id = 2

    @classmethod
    def from_corpus(cls, texts: Iterable[str], max_length: int = 32, min_count: int = 1,
                    max_size: int | None = None) -> WordTokenizer:
        """Build the vocabulary from ``texts`` (frequency, then alphabetical order)."""
        counts = Counter(word for text in texts for word in split_words(text))
        for special in SPECIAL_TOKENS:
            counts.pop(special.lower(), None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        words = [word for word, count in ranked if count >= min_count]
        if max_size is not None:
            words = words[:max_size]
        return cls(words, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return self.vocab_size

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``[CLS]`` + the cleaned words, truncated to ``max_length``."""
        ids = [self.cls_id] + [self.stoi.get(w, self.unk_id) for w in split_words(text)]
        return ids[: self.max_length]

    def __call__(self, texts: Sequence[str], padding: str = "max_length"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both ``long`` of shape [B, L].

        ``padding="max_length"`` pads to 32 as QuRe does; ``"longest"`` pads to the longest
        sequence in the batch (same outputs under the mask, less compute).
        """
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single string")
        return pad_token_rows([self.tokenize(t) for t in texts], self.pad_id,
                              self.max_length, padding)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words behind ``ids``, without special tokens."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self.itos[i] for i in values if i >= len(SPECIAL_TOKENS))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description that :meth:`from_dict` turns back into this tokenizer."""
        return {"type": "word", "max_length": self.max_length, "words": list(self.words)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WordTokenizer:
        if data.get("type") != "word":
            raise ValueError(f"not a word tokenizer description: type={data.get('type')!r}")
        return cls(list(data["words"]), max_length=int(data["max_length"]))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, WordTokenizer) and self.words == other.words
                and self.max_length == other.max_length)

    __hash__ = None  # type: ignore[assignment]
