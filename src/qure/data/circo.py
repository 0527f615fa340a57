"""CIRCO (miccunifi/CIRCO) over the COCO 2017 unlabeled gallery.

``root/annotations/{val,test}.json`` hold the queries (several ground truths each on val);
the gallery is ``root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json``
(``images[*].id`` and ``file_name``), images under ``root/COCO2017_unlabeled/unlabeled2017``.
The reference stays in the ranking; metrics are mAP@K over all ground truths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qure.data.base import CIRDataset, CIRQuery, Gallery, Protocol, require_fields
from qure.data.text import circo_query_text
from qure.errors import DatasetFormatError
from qure.io import read_json

# The release's prompt (blip2_qure.py / SEARLE); "$" is a zero-shot leftover it keeps.
DEFAULT_TEMPLATE = "a photo of $ that {caption}"


class CIRCO(CIRDataset):
    name = "circo"
    splits = ("val", "test")
    protocol = Protocol(remove_reference=False, recall_ks=(5, 10, 25, 50),
                        map_ks=(5, 10, 25, 50))

    def __init__(self, root: str | Path, template: str = DEFAULT_TEMPLATE):
        super().__init__(root)
        if "{caption}" not in template:
            raise ValueError(f"CIRCO query template {template!r} lacks the '{{caption}}' slot")
        self.template = template

    def annotation_file(self, split: str, category: str | None = None) -> Path:
        return self.root / "annotations" / f"{split}.json"

    @property
    def gallery_file(self) -> Path:
        return self.root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"

    def load_gallery(self, split: str, category: str | None = None) -> Gallery:
        self.check_split(split, category)
        path = self.gallery_file
        info = read_json(path, dict)
        images = require_fields(info, ["images"], path, "top level")["images"]
        files: dict[str, str] = {}
        for i, image in enumerate(images):
            image = require_fields(image, ["id", "file_name"], path, f"images[{i}]")
            files[str(image["id"])] = str(image["file_name"])
        if len(files) != len(images):
            raise DatasetFormatError(path, "duplicate image ids in 'images'")
        folder = self.root / "COCO2017_unlabeled" / "unlabeled2017"

        def locate(name: str) -> tuple[Path, ...]:
            file_name = files.get(name)
            return (folder / file_name,) if file_name is not None else ()

        return Gallery(list(files), path, locate)

    def parse_query(self, record: Any, index: int, path: Path, split: str,
                    category: str | None) -> CIRQuery:
        keys = ["id", "reference_img_id", "relative_caption"]
        if split != "test":
            keys += ["target_img_id", "gt_img_ids"]
        record = require_fields(record, keys, path, index)
        targets: tuple[str, ...] = ()
        if split != "test":
            target = str(record["target_img_id"])
            ground_truths = [str(g) for g in record["gt_img_ids"]]
            if target not in ground_truths:
                raise DatasetFormatError(path, "target_img_id is not among gt_img_ids",
                                         record=index)
            # Primary target first, then the other ground truths in file order.
            targets = (target, *dict.fromkeys(g for g in ground_truths if g != target))
        return CIRQuery(
            query_id=str(record["id"]),
            reference=str(record["reference_img_id"]),
            text=circo_query_text(str(record["relative_caption"]), self.template),
            targets=targets,
            record=index,
        )
