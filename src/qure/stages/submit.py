"""Stage 5b: the test-server files of a run's final model: CIRR test1 (``recall``, top 50
with the reference removed, and ``recall_subset``, top 3 of the img_set) and CIRCO test
(top 50 of the whole COCO gallery), the splits behind the paper's Table 3 and Table 5.

The servers score every query of the split, so nothing may be missing here: the test
split is loaded under the ``fail`` policy whatever ``data.missing_images`` says (CIRR
and CIRCO verification already refuses an incomplete image set).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from qure.device import device_report, reset_peak_memory, resolve_device
from qure.evaluation import split_scores
from qure.io import atomic_write_json
from qure.stages.data import TEST_SPLIT, load_splits
from qure.stages.evaluate import run_label
from qure.stages.models import load_run_model, open_features
from qure.submissions import (
    circo_submission,
    cirr_submissions,
    write_circo_submission,
    write_cirr_submissions,
)

#: Where each test split is scored (the file names the servers expect to be uploaded).
SERVERS = {
    "cirr": "http://cirr.cecs.anu.edu.au/ (backup https://cirr.junjie.au/): upload both files "
            "by hand; at most 5 MB each",
    "circo": "https://circo.micc.unifi.it/: upload the file by hand; results come by email",
}
#: The CIRR server refuses larger files.
CIRR_MAX_BYTES = 5 * 1024 * 1024


def submission_files(benchmark: str, out_dir: str | Path, name: str) -> list[Path]:
    """The server files :func:`submission_step` writes for ``benchmark``."""
    out_dir = Path(out_dir)
    if benchmark == "cirr":
        return [out_dir / f"recall_submission_{name}.json",
                out_dir / f"recall_subset_submission_{name}.json"]
    if benchmark == "circo":
        return [out_dir / f"circo_submission_{name}.json"]
    raise ValueError(f"no test server for {benchmark!r}; known: {', '.join(TEST_SPLIT)}")


def submission_step(benchmark: str, root: str | Path, run_dir: str | Path,
                    features: str | Path, out_dir: str | Path, report: str | Path, *,
                    name: str, batch_size: int = 256, device: str = "auto") -> dict[str, Any]:
    """Score ``benchmark``'s test split with a run's final model, write the server files
    into ``out_dir`` (validated first) and ``report`` (what was written, from what)."""
    if benchmark not in TEST_SPLIT:
        raise ValueError(f"no test server for {benchmark!r}; known: {', '.join(TEST_SPLIT)}")
    started = time.perf_counter()
    where = resolve_device(device)
    reset_peak_memory(where)
    backbone, summary = load_run_model(run_dir, where)
    table = open_features(features, backbone)
    split_name = TEST_SPLIT[benchmark]
    (split,) = load_splits(benchmark, root, split_name, missing="fail")
    scores = split_scores(backbone, table, split, batch_size)
    ids = [q.query_id for q in split]
    if benchmark == "cirr":
        recall, recall_subset = cirr_submissions(scores, ids, split.gallery.names,
                                                 split.reference_indices(),
                                                 split.member_indices())
        written = write_cirr_submissions(out_dir, name, recall, recall_subset)
    else:
        path = submission_files(benchmark, out_dir, name)[0]
        written = (write_circo_submission(path, circo_submission(scores, ids,
                                                                 split.gallery.names), ids),)
    files = [{"path": str(path), "bytes": path.stat().st_size,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for path in written]
    if benchmark == "cirr" and (big := [f for f in files if f["bytes"] > CIRR_MAX_BYTES]):
        raise ValueError(f"{big[0]['path']}: {big[0]['bytes']} bytes, over the CIRR server's "
                         f"{CIRR_MAX_BYTES} byte limit")
    result: dict[str, Any] = {
        "benchmark": benchmark, "split": split_name, "run": str(run_dir),
        **run_label(summary), "queries": len(split), "gallery_images": len(split.gallery),
        "server": SERVERS[benchmark], "files": files, **device_report(where),
        "seconds": round(time.perf_counter() - started, 3)}
    atomic_write_json(report, result)
    return result
