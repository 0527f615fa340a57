"""HP-FashionIQ (QuRe's human-preference set, ``HP_FashionIQ/hpfiq.json``).

Structure: ``{user_<n>: {question_set_<m>: {ref_img_paths, targ_img_paths, sentences,
retrieved_set1, retrieved_set2, "preferred set"}}}``, six parallel lists; each retrieved
set is ``{img_path: [5 paths], user_score: "1".."5"}``. Paths look like
``/-/image_data/<cat>/<ASIN>.jpg``: only that ``/-/`` prefix is a placeholder for the image
root (sentences contain hyphens, so a blind replace would corrupt them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from qure.data.base import require_fields
from qure.errors import DatasetFormatError, MissingImageError
from qure.io import read_json

ANNOTATION_FILE = "hpfiq.json"
PLACEHOLDER_PREFIX = "/-/"
SET_SIZE = 5
_LISTS = ("ref_img_paths", "targ_img_paths", "sentences", "retrieved_set1",
          "retrieved_set2", "preferred set")


@dataclass(frozen=True)
class HPComparison:
    """One forced choice between two top-5 sets retrieved for the same query."""

    user: str
    question_set: str
    index: int
    category: str
    reference: str
    target: str
    sentence: str
    set1: tuple[str, ...]
    set2: tuple[str, ...]
    score1: int
    score2: int
    preferred: int  # 1 or 2

    @property
    def record(self) -> str:
        return f"{self.user}/{self.question_set}[{self.index}]"


def _image_id(raw: Any, path: Path, where: str) -> tuple[str, str]:
    """``/-/image_data/<cat>/<ASIN>.jpg`` -> (category, ASIN)."""
    if not isinstance(raw, str) or not raw.startswith(PLACEHOLDER_PREFIX):
        raise DatasetFormatError(path, f"image path {raw!r} does not start with "
                                 f"{PLACEHOLDER_PREFIX!r}", record=where)
    rel = PurePosixPath(raw[len(PLACEHOLDER_PREFIX):])
    if len(rel.parts) != 3 or rel.parts[0] != "image_data":
        raise DatasetFormatError(path, f"image path {raw!r} is not "
                                 "/-/image_data/<category>/<ASIN>.<ext>", record=where)
    return rel.parts[1], rel.stem


def _score(raw: Any, path: Path, where: str, key: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= 5 or str(raw).strip() != str(value):
        raise DatasetFormatError(path, f"{key} must be '1'..'5', got {raw!r}", record=where)
    return value


class HPFashionIQ:
    """All comparisons of ``root/hpfiq.json``; images under ``image_root`` (default root)."""

    name = "hp_fashioniq"

    def __init__(self, root: str | Path, image_root: str | Path | None = None):
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root is not None else self.root
        self.source = self.root / ANNOTATION_FILE
        self.comparisons = self._parse(read_json(self.source, dict))

    def _parse(self, data: dict) -> list[HPComparison]:
        path = self.source
        out: list[HPComparison] = []
        for user, sets in data.items():
            if not isinstance(sets, dict):
                raise DatasetFormatError(path, "expected an object of question sets",
                                         record=user)
            for qset, block in sets.items():
                where = f"{user}/{qset}"
                block = require_fields(block, _LISTS, path, where)
                lengths = {k: len(block[k]) if isinstance(block[k], list) else -1
                           for k in _LISTS}
                if len(set(lengths.values())) != 1 or -1 in lengths.values():
                    raise DatasetFormatError(path, f"the six lists must be parallel lists, "
                                             f"got lengths {lengths}", record=where)
                for i in range(lengths["sentences"]):
                    out.append(self._comparison(block, user, qset, i))
        return out

    def _comparison(self, block: dict, user: str, qset: str, i: int) -> HPComparison:
        path = self.source
        where = f"{user}/{qset}[{i}]"
        category, reference = _image_id(block["ref_img_paths"][i], path, where)
        _, target = _image_id(block["targ_img_paths"][i], path, where)
        sets, scores = [], []
        for key in ("retrieved_set1", "retrieved_set2"):
            entry = require_fields(block[key][i], ["img_path", "user_score"], path, where)
            paths = entry["img_path"]
            if not isinstance(paths, list) or len(paths) != SET_SIZE:
                raise DatasetFormatError(path, f"{key}.img_path must list {SET_SIZE} images",
                                         record=where)
            ids = [_image_id(p, path, where) for p in paths]
            if any(cat != category for cat, _ in ids):
                raise DatasetFormatError(path, f"{key} mixes categories", record=where)
            sets.append(tuple(asin for _, asin in ids))
            scores.append(_score(entry["user_score"], path, where, f"{key}.user_score"))
        preferred = block["preferred set"][i]
        if preferred not in ("1", "2"):
            raise DatasetFormatError(path, f"'preferred set' must be '1' or '2', got "
                                     f"{preferred!r}", record=where)
        sentence = block["sentences"][i]
        if not isinstance(sentence, str):
            raise DatasetFormatError(path, "sentence must be a string", record=where)
        return HPComparison(user, qset, i, category, reference, target, sentence,
                            sets[0], sets[1], scores[0], scores[1], int(preferred))

    def __len__(self) -> int:
        return len(self.comparisons)

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(c.user for c in self.comparisons))

    def category_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(c.category for c in self.comparisons).items()))

    def image_candidates(self, category: str, asin: str) -> tuple[Path, ...]:
        return (self.image_root / "image_data" / category / f"{asin}.jpg",)

    def images(self) -> list[tuple[str, str]]:
        """Every distinct (category, ASIN) the comparisons show: references and sets."""
        seen: dict[tuple[str, str], None] = {}
        for c in self.comparisons:
            for asin in (c.reference, *c.set1, *c.set2):
                seen.setdefault((c.category, asin), None)
        return list(seen)

    def image_path(self, category: str, asin: str, record: str | None = None) -> Path:
        candidates = self.image_candidates(category, asin)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise MissingImageError(asin, list(candidates), record)

    def missing_images(self) -> list[tuple[str, str]]:
        return [(cat, asin) for cat, asin in self.images()
                if not any(p.is_file() for p in self.image_candidates(cat, asin))]
