"""FashionIQ (XiaoxiaoGuo/fashion-iq) in the CLIP4Cir/SPRC/QuRe layout.

``root/captions/cap.{cat}.{split}.json`` holds triplets ``{candidate, target, captions}``
(no ``target`` in test); ``root/image_splits/split.{cat}.{split}.json`` lists the ASINs of
the split's corpus; images are ``root/images/<ASIN>.png`` or ``.jpg``. The standard
validation protocol ranks the whole split corpus and keeps the reference in the ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qure.data.base import CIRDataset, CIRQuery, Gallery, Protocol, require_fields
from qure.data.text import fashioniq_query_text
from qure.errors import DatasetFormatError
from qure.io import read_json

CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_EXTENSIONS = (".png", ".jpg")


class FashionIQ(CIRDataset):
    name = "fashioniq"
    splits = ("train", "val", "test")
    categories = CATEGORIES
    protocol = Protocol(remove_reference=False, recall_ks=(10, 50))

    def annotation_file(self, split: str, category: str | None = None) -> Path:
        return self.root / "captions" / f"cap.{category}.{split}.json"

    def split_file(self, split: str, category: str | None) -> Path:
        return self.root / "image_splits" / f"split.{category}.{split}.json"

    def image_candidates(self, asin: str) -> tuple[Path, ...]:
        # The original downloads are JPEGs; SPRC/QuRe open .png (renamed copies). Accept both.
        return tuple(self.root / "images" / f"{asin}{ext}" for ext in IMAGE_EXTENSIONS)

    def load_gallery(self, split: str, category: str | None = None) -> Gallery:
        self.check_split(split, category)
        path = self.split_file(split, category)
        names = read_json(path, list)
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise DatasetFormatError(path, f"expected an ASIN string, got {name!r}",
                                         record=i)
        if len(set(names)) != len(names):
            raise DatasetFormatError(path, "duplicate ASINs in the split file")
        return Gallery(names, path, self.image_candidates)

    def parse_query(self, record: Any, index: int, path: Path, split: str,
                    category: str | None) -> CIRQuery:
        keys = ("candidate", "captions") if split == "test" else (
            "candidate", "target", "captions")
        record = require_fields(record, keys, path, index)
        captions = record["captions"]
        if (not isinstance(captions, list) or len(captions) != 2
                or not all(isinstance(c, str) for c in captions)):
            raise DatasetFormatError(path, "'captions' must be a list of two strings",
                                     record=index)
        target = record.get("target")
        return CIRQuery(
            query_id=f"{category}-{index}",
            reference=str(record["candidate"]),
            text=fashioniq_query_text(captions),
            targets=(str(target),) if target is not None else (),
            category=category,
            record=index,
        )
