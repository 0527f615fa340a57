"""Downloading, verifying and laying out the real datasets and weights.

:mod:`~qure.download.http` fetches one file (resumable, retried, checksum-verified),
:mod:`~qure.download.sources` reads the catalogue of public files (``sources.yaml``),
:mod:`~qure.download.archives` extracts archives atomically and
:mod:`~qure.download.layout` puts images where the loaders expect them.
"""

from __future__ import annotations

from qure.download.archives import ExtractResult, extract_archive
from qure.download.fetch import fetch_files, verify_files
from qure.download.http import DownloadResult, download, file_digests
from qure.download.sources import DatasetSources, SourceFile, dataset_sources, load_sources

__all__ = [
    "DatasetSources", "DownloadResult", "ExtractResult", "SourceFile", "dataset_sources",
    "download", "extract_archive", "fetch_files", "file_digests", "load_sources",
    "verify_files",
]
