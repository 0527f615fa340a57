"""Ground-truth relevance for the synthetic benchmarks, from ``<bench root>/oracle.json``.

The oracle knows every image's semantic attributes and, per split and query id (the ids
the loaders produce: FashionIQ ``<category>-<record>``, CIRR ``str(pairid)``, CIRCO
``str(id)``, HP-FashionIQ ``user_<n>/question_set_<m>[<i>]`` under split
``"comparisons"``), the attribute values the composed query requires. From these:

* :func:`graded_relevance`: the fraction of required (non-fixed) attributes an image
  matches, zero when a fixed attribute (a garment's category) differs;
* :func:`relevance_matrix`: images matching every requirement (graded relevance 1);
* :func:`false_negative_mask` / :func:`count_false_negatives`: which images of a
  hard-negative set are in fact relevant to the query (other than the labelled target).

All of them work on whole [queries x gallery] blocks at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qure.errors import DatasetFormatError
from qure.io import read_json
from qure.synthetic.world import ORACLE_FORMAT

if TYPE_CHECKING:
    from qure.data.base import CIRSplit

ORACLE_FILE = "oracle.json"
FREE = -1
"""Query code of an attribute the query does not constrain."""
UNKNOWN = -2
"""Image code of an image the oracle does not know: it matches nothing."""
_CHUNK_ELEMENTS = 1 << 24  # bound the [rows, images, attributes] comparison block


@dataclass(frozen=True)
class QueryTruth:
    """What one composed query asks for."""

    reference: str
    target: str
    required: Mapping[str, str]
    changed: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def _match_block(query_codes: torch.Tensor, image_codes: torch.Tensor) -> torch.Tensor:
    """[Q, N, A]: does image n carry query q's value of attribute a (free counts as yes)."""
    return ((image_codes[None, :, :] == query_codes[:, None, :])
            | (query_codes[:, None, :] == FREE))


def _row_chunks(n_queries: int, n_images: int, n_attributes: int) -> range:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_images * n_attributes))
    return range(0, n_queries, step)


def graded_relevance(query_codes: torch.Tensor, image_codes: torch.Tensor,
                     fixed: torch.Tensor) -> torch.Tensor:
    """[Q, N] float32 in [0, 1]: matched share of each query's required non-fixed attributes.

    ``query_codes`` [Q, A] holds value indices or :data:`FREE`; ``image_codes`` [N, A]
    value indices or :data:`UNKNOWN`; ``fixed`` [A] bool marks attributes that must match
    (the score is 0 otherwise). A query that requires only fixed attributes scores 1 on
    every image that matches them.
    """
    out = torch.empty(len(query_codes), len(image_codes), dtype=torch.float32)
    chunks = _row_chunks(len(query_codes), *image_codes.shape)
    for start in chunks:
        rows = query_codes[start:start + chunks.step]
        match = _match_block(rows, image_codes)
        required = rows != FREE
        graded_attrs = (required & ~fixed)[:, None, :]
        n_graded = graded_attrs.sum(-1)
        matched = (match & graded_attrs).sum(-1)
        score = torch.where(n_graded > 0, matched / n_graded.clamp(min=1), 1.0)
        fixed_ok = (match | ~fixed).all(-1)
        out[start:start + len(rows)] = score * fixed_ok
    return out


def relevance_matrix(query_codes: torch.Tensor, image_codes: torch.Tensor) -> torch.Tensor:
    """[Q, N] bool: the image satisfies every requirement of the query."""
    out = torch.empty(len(query_codes), len(image_codes), dtype=torch.bool)
    chunks = _row_chunks(len(query_codes), *image_codes.shape)
    for start in chunks:
        rows = query_codes[start:start + chunks.step]
        out[start:start + len(rows)] = _match_block(rows, image_codes).all(-1)
    return out


def false_negative_mask(relevant: torch.Tensor, candidates: torch.Tensor,
                        targets: torch.Tensor | None = None) -> torch.Tensor:
    """[Q, K] bool: candidate negatives (gallery columns, -1 = padding) that are relevant.

    ``relevant`` is a [Q, N] relevance matrix over the same gallery; the labelled
    ``targets`` [Q] (gallery columns) never count as false negatives.
    """
    valid = candidates >= 0
    hits = torch.gather(relevant, 1, candidates.clamp(min=0)) & valid
    if targets is not None:
        hits &= candidates != targets[:, None]
    return hits


def count_false_negatives(relevant: torch.Tensor, candidates: torch.Tensor,
                          targets: torch.Tensor | None = None) -> torch.Tensor:
    """[Q] int64: number of false negatives in each query's candidate negative set."""
    return false_negative_mask(relevant, candidates, targets).sum(-1)


class Oracle:
    """The parsed ``oracle.json`` of one synthetic benchmark."""

    def __init__(self, document: Mapping[str, Any], source: Path):
        self.source = source
        if document.get("format") != ORACLE_FORMAT:
            raise DatasetFormatError(source, f"not a {ORACLE_FORMAT} file "
                                     f"(format {document.get('format')!r})")
        try:
            self.benchmark: str = document["benchmark"]
            self.world: str = document["world"]
            vocab: Mapping[str, list[str]] = document["attributes"]
            self.attributes = tuple(vocab)
            self.values = {a: tuple(v) for a, v in vocab.items()}
            self.fixed = tuple(document["fixed"])
            self._value_index = {a: {v: i for i, v in enumerate(vs)}
                                 for a, vs in self.values.items()}
            images: Mapping[str, list[str]] = document["images"]
            self.image_index = {name: i for i, name in enumerate(images)}
            self._image_codes = torch.tensor(
                [[self._value_index[a][v] for a, v in zip(self.attributes, values, strict=True)]
                 for values in images.values()], dtype=torch.long,
            ).reshape(len(images), len(self.attributes))
            self.queries: dict[str, dict[str, QueryTruth]] = {
                split: {qid: self._truth(record) for qid, record in records.items()}
                for split, records in document["queries"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetFormatError(source, f"malformed oracle: {err!r}") from err

    @staticmethod
    def _truth(record: Mapping[str, Any]) -> QueryTruth:
        known = {"reference", "target", "required", "changed"}
        return QueryTruth(str(record["reference"]), str(record["target"]),
                          dict(record["required"]), tuple(record.get("changed", ())),
                          {k: v for k, v in record.items() if k not in known})

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.queries)

    @property
    def fixed_mask(self) -> torch.Tensor:
        return torch.tensor([a in self.fixed for a in self.attributes], dtype=torch.bool)

    def truth(self, split: str, query_id: str) -> QueryTruth:
        try:
            return self.queries[split][query_id]
        except KeyError:
            raise KeyError(f"{self.source}: no query {query_id!r} in split {split!r}") from None

    def attributes_of(self, name: str) -> dict[str, str]:
        """The semantic attributes of one image."""
        codes = self._image_codes[self.image_index[name]].tolist()
        return {a: self.values[a][c] for a, c in zip(self.attributes, codes, strict=True)}

    def image_codes(self, names: Sequence[str]) -> torch.Tensor:
        """[N, A] value indices; rows of images the oracle does not know are UNKNOWN."""
        rows = torch.tensor([self.image_index.get(n, -1) for n in names], dtype=torch.long)
        codes = torch.full((len(names), len(self.attributes)), UNKNOWN, dtype=torch.long)
        known = rows >= 0
        codes[known] = self._image_codes[rows[known]]
        return codes

    def query_codes(self, split: str, query_ids: Sequence[str]) -> torch.Tensor:
        """[Q, A] required value indices, FREE where the query leaves an attribute open."""
        codes = torch.full((len(query_ids), len(self.attributes)), FREE, dtype=torch.long)
        for row, qid in enumerate(query_ids):
            for col, attribute in enumerate(self.attributes):
                value = self.truth(split, qid).required.get(attribute)
                if value is not None:
                    codes[row, col] = self._value_index[attribute][value]
        return codes

    def graded_relevance(self, split: str, query_ids: Sequence[str],
                         names: Sequence[str]) -> torch.Tensor:
        """[Q, N] graded relevance of each named image to each query."""
        return graded_relevance(self.query_codes(split, query_ids), self.image_codes(names),
                                self.fixed_mask)

    def relevance_matrix(self, split: str, query_ids: Sequence[str],
                         names: Sequence[str]) -> torch.Tensor:
        """[Q, N] bool: the image fully satisfies the query."""
        return relevance_matrix(self.query_codes(split, query_ids), self.image_codes(names))

    def relevant_images(self, split: str, query_id: str, names: Sequence[str]) -> list[str]:
        """The named images that fully satisfy one query, in the given order."""
        row = self.relevance_matrix(split, [query_id], names)[0]
        return [n for n, hit in zip(names, row.tolist(), strict=True) if hit]

    def split_relevance(self, split: CIRSplit, names: Sequence[str] | None = None,
                        graded: bool = False) -> torch.Tensor:
        """Relevance of a loaded split's queries to its gallery (or to ``names``)."""
        ids = [q.query_id for q in split.queries]
        columns = split.gallery.names if names is None else names
        if graded:
            return self.graded_relevance(split.split, ids, columns)
        return self.relevance_matrix(split.split, ids, columns)


def load_oracle(bench_root: str | Path) -> Oracle:
    """The oracle of a synthetic benchmark folder (e.g. ``out/"fashioniq"``)."""
    path = Path(bench_root) / ORACLE_FILE
    return Oracle(read_json(path, dict), path)
