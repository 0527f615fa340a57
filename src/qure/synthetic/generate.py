"""Write the four synthetic benchmarks to disk: ``synthesize(out_dir, seed, scale)``.

Each benchmark folder gets the dataset's real files, its images, an ``oracle.json`` (see
:mod:`qure.synthetic.oracle`) and a ``synthetic_manifest.json`` listing every file it
wrote with its sha256. The manifest is what lets a re-run into the same folder remove
files an earlier run (another seed or scale) left behind, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from qure.io import atomic_write_bytes
from qure.synthetic.circo import build_circo
from qure.synthetic.cirr import build_cirr
from qure.synthetic.common import BenchmarkBuild, JsonFile
from qure.synthetic.fashioniq import build_fashioniq
from qure.synthetic.hp_fashioniq import build_hp_fashioniq
from qure.synthetic.render import render_all
from qure.synthetic.sizes import SynthSizes, resolve_scale

log = logging.getLogger(__name__)

BENCHMARKS = ("fashioniq", "cirr", "circo", "hp_fashioniq")
MANIFEST = "synthetic_manifest.json"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthesisReport:
    """What a :func:`synthesize` call produced (timing is reported, never written)."""

    out_dir: Path
    seed: int
    scale: str
    counts: dict[str, dict[str, int | float]]
    files: int
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        lines = [f"synthetic CIR benchmarks (seed {self.seed}, scale {self.scale}) in "
                 f"{self.out_dir}: {self.files} files, {self.size_bytes / 1e6:.1f} MB, "
                 f"{self.seconds:.1f} s"]
        for name, counts in self.counts.items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return "\n".join(lines)


def json_bytes(payload: Any, indent: int | None) -> bytes:
    """The exact bytes :func:`qure.io.atomic_write_json` would write."""
    return (json.dumps(payload, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def _builds(seed: int, sizes: SynthSizes, wanted: Sequence[str]) -> list[BenchmarkBuild]:
    builds: list[BenchmarkBuild] = []
    if "fashioniq" in wanted or "hp_fashioniq" in wanted:
        fashioniq, fiq_data = build_fashioniq(seed, sizes.fashioniq)
        if "fashioniq" in wanted:
            builds.append(fashioniq)
        if "hp_fashioniq" in wanted:
            builds.append(build_hp_fashioniq(seed, sizes.hp_fashioniq, fiq_data))
    if "cirr" in wanted:
        builds.append(build_cirr(seed, sizes.cirr))
    if "circo" in wanted:
        builds.append(build_circo(seed, sizes.circo, sizes.image_size))
    return sorted(builds, key=lambda b: BENCHMARKS.index(b.name))


def _write_json(root: Path, files: Sequence[JsonFile]) -> dict[str, str]:
    hashes = {}
    for file in files:
        data = json_bytes(file.payload, file.indent)
        atomic_write_bytes(root / file.path, data)
        hashes[file.path] = hashlib.sha256(data).hexdigest()
    return hashes


def _listed_files(bench_root: Path) -> set[str] | None:
    """Files the folder's manifest lists, or None when there is no readable manifest."""
    try:
        files = json.loads((bench_root / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return {rel for rel in files if _is_inside(rel)}


def _is_inside(rel: str) -> bool:
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts


def _claim(bench_root: Path, name: str, planned: set[str]) -> None:
    """Refuse folders this generator did not write; else record what this run will write.

    The provisional manifest lists the earlier run's files and this run's, so that if
    this run is interrupted the next one still knows every file it may have to remove.
    """
    previous = _listed_files(bench_root)
    if previous is None and bench_root.is_dir() and any(bench_root.iterdir()):
        raise FileExistsError(
            f"{bench_root} holds files but no {MANIFEST}: it was not written by "
            f"qure.synthetic (real {name} data?). Choose another --out or empty it first.")
    stub = {"generator": "qure.synthetic", "benchmark": name, "complete": False,
            "files": dict.fromkeys(sorted((previous or set()) | planned), "")}
    atomic_write_bytes(bench_root / MANIFEST, json_bytes(stub, indent=1))


def _remove_stale(bench_root: Path, keep: set[str]) -> int:
    """Delete files the manifest lists that this run did not write (and emptied folders)."""
    removed = 0
    for rel in sorted((_listed_files(bench_root) or set()) - keep):
        stale = bench_root / rel
        if stale.is_file():
            stale.unlink()
            removed += 1
            for folder in stale.parents:
                if folder == bench_root or any(folder.iterdir()):
                    break
                folder.rmdir()
    return removed


def _manifest(build: BenchmarkBuild, seed: int, scale: str, sizes: SynthSizes,
              hashes: dict[str, str]) -> dict[str, Any]:
    own = {build.local_path(p): hashes[p] for p in hashes if p.startswith(build.name + "/")}
    return {
        "generator": "qure.synthetic",
        "version": GENERATOR_VERSION,
        "benchmark": build.name,
        "complete": True,
        "seed": seed,
        "scale": scale,
        "sizes": {build.name: asdict(getattr(sizes, build.name)),
                  "image_size": sizes.image_size},
        "counts": dict(build.counts),
        "files": dict(sorted(own.items())),
    }


def synthesize(out_dir: str | Path, seed: int = 0, scale: str | SynthSizes = "default", *,
               benchmarks: Sequence[str] = BENCHMARKS,
               workers: int | None = None) -> SynthesisReport:
    """Generate the synthetic benchmarks under ``out_dir/<benchmark>/``.

    ``scale`` is "smoke", "default" or a :class:`SynthSizes`. The output depends only on
    ``seed`` and the sizes (not on ``workers``, the machine's clock or hash seeds): the
    same arguments always give byte-identical files, also when re-run into a folder that
    holds an earlier run.
    """
    started = time.perf_counter()
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(BENCHMARKS)}")
    scale_name, sizes = resolve_scale(scale)
    root = Path(out_dir)
    builds = _builds(seed, sizes, benchmarks)
    for build in builds:
        _claim(root / build.name, build.name, build.planned_files())
    log.info("planned %s in %.2f s", ", ".join(b.name for b in builds),
             time.perf_counter() - started)

    jobs = [job for build in builds for job in build.images]
    hashes = render_all(jobs, root, sizes.image_size, workers)
    log.info("rendered %d images in %.2f s", len(jobs), time.perf_counter() - started)
    for build in builds:
        hashes.update(_write_json(root, build.json_files))

    total_files, total_bytes = 0, 0
    for build in builds:
        manifest = _manifest(build, seed, scale_name, sizes, hashes)
        bench_root = root / build.name
        removed = _remove_stale(bench_root, set(manifest["files"]))
        if removed:
            log.info("%s: removed %d files left by an earlier run", build.name, removed)
        atomic_write_bytes(bench_root / MANIFEST, json_bytes(manifest, indent=1))
        total_files += len(manifest["files"]) + 1
        total_bytes += sum((bench_root / rel).stat().st_size for rel in manifest["files"])
    report = SynthesisReport(root, seed, scale_name, {b.name: dict(b.counts) for b in builds},
                             total_files, total_bytes, time.perf_counter() - started)
    log.info("done in %.2f s", report.seconds)
    return report
