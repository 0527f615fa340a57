"""CIRR (Cuberick-Orion/CIRR, branch ``cirr_dataset``) in the CLIP4Cir/SPRC/QuRe layout.

``root`` is the ``cirr_dataset`` folder: annotations in ``root/cirr/captions/
cap.rc2.{split}.json`` and ``root/cirr/image_splits/split.rc2.{split}.json`` (image name ->
relative path, e.g. ``./train/34/train-11041-2-img0.png``), images at ``root/<relpath>``.
Validation ranks the split corpus with the reference removed, plus a subset ranking over
each query's six img_set members.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qure.data.base import CIRDataset, CIRQuery, Gallery, Protocol, require_fields
from qure.errors import DatasetFormatError
from qure.io import read_json

IMG_SET_SIZE = 6


class CIRR(CIRDataset):
    name = "cirr"
    splits = ("train", "val", "test1")
    protocol = Protocol(remove_reference=True, recall_ks=(1, 5, 10, 50), subset_ks=(1, 2, 3))

    def annotation_file(self, split: str, category: str | None = None) -> Path:
        return self.root / "cirr" / "captions" / f"cap.rc2.{split}.json"

    def split_file(self, split: str) -> Path:
        return self.root / "cirr" / "image_splits" / f"split.rc2.{split}.json"

    def load_gallery(self, split: str, category: str | None = None) -> Gallery:
        self.check_split(split, category)
        path = self.split_file(split)
        mapping = read_json(path, dict)
        for name, rel in mapping.items():
            if not isinstance(rel, str):
                raise DatasetFormatError(path, f"expected a relative path, got {rel!r}",
                                         record=name)
        root = self.root

        def locate(name: str) -> tuple[Path, ...]:
            rel = mapping.get(name)
            return (root / rel,) if rel is not None else ()

        return Gallery(list(mapping), path, locate)

    def parse_query(self, record: Any, index: int, path: Path, split: str,
                    category: str | None) -> CIRQuery:
        keys = ["pairid", "reference", "caption", "img_set"]
        if split != "test1":
            keys.append("target_hard")
        record = require_fields(record, keys, path, index)
        where = f"{index} (pairid {record['pairid']})"
        img_set = require_fields(record["img_set"], ["members"], path, where)
        members = tuple(str(m) for m in img_set["members"])
        reference = str(record["reference"])
        target = record.get("target_hard")
        if len(members) != IMG_SET_SIZE:
            raise DatasetFormatError(path, f"img_set has {len(members)} members, expected "
                                     f"{IMG_SET_SIZE}", record=where)
        for role, name in (("reference", reference), ("target", target)):
            if name is not None and name not in members:
                raise DatasetFormatError(path, f"{role} {name!r} is not an img_set member",
                                         record=where)
        return CIRQuery(
            query_id=str(record["pairid"]),
            reference=reference,
            text=str(record["caption"]),
            targets=(str(target),) if target is not None else (),
            members=members,
            record=index,
        )
