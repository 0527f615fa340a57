"""Dataset loaders: one abstraction (:mod:`qure.data.base`), thin per-dataset parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qure.data.base import CIRDataset, CIRQuery, CIRSplit, Gallery, Protocol
from qure.data.circo import CIRCO
from qure.data.cirr import CIRR
from qure.data.fashioniq import FashionIQ
from qure.data.hp_fashioniq import HPComparison, HPFashionIQ

CIR_DATASETS: dict[str, type[CIRDataset]] = {
    FashionIQ.name: FashionIQ,
    CIRR.name: CIRR,
    CIRCO.name: CIRCO,
}
DATASET_NAMES = (*CIR_DATASETS, HPFashionIQ.name)


def open_dataset(name: str, root: str | Path, **options: Any) -> CIRDataset:
    """The CIR benchmark ``name`` rooted at ``root`` (options go to its constructor)."""
    try:
        cls = CIR_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of "
                         f"{', '.join(CIR_DATASETS)}") from None
    return cls(root, **options)


__all__ = [
    "CIRCO", "CIRR", "CIR_DATASETS", "DATASET_NAMES", "CIRDataset", "CIRQuery", "CIRSplit",
    "FashionIQ", "Gallery", "HPComparison", "HPFashionIQ", "Protocol", "open_dataset",
]
