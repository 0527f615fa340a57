"""Put images where the loaders look for them, and say precisely what is missing.

* FashionIQ: ``<root>/images/<ASIN>.jpg|.png`` from a user-supplied archive or folder (flat,
  ``image_data/<cat>/`` or any nesting), or fetched from the per-ASIN URL lists; a
  per-split, per-category missing-image report. Split files are never edited.
* CIRR: verify ``<root>/<relpath>`` for every split-file entry (``train/NN/``, ``dev/``,
  ``test1/``); optionally arrange a folder of NLVR2 images into that layout; otherwise fail
  with the manual steps.
* CIRCO: count the COCO unlabeled2017 images the gallery index lists.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from qure.download.archives import extract_archive
from qure.download.http import download, part_path
from qure.errors import DatasetFormatError, DownloadError, LayoutError, OfflineError
from qure.io import read_json

log = logging.getLogger(__name__)

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
CIRR_SPLITS = ("train", "val", "test1")
CIRCO_SPLITS = ("val", "test")
# Accepted on input; .jpeg lands as .jpg (the loaders try .png then .jpg; PIL reads content).
IMAGE_SUFFIXES = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}
METHODS = ("copy", "hardlink", "symlink", "move")
MISSING_EXAMPLES = 20
NLVR2_URL = "https://github.com/lil-lab/nlvr/tree/master/nlvr2"
CIRR_URL = "https://github.com/Cuberick-Orion/CIRR"
#: Where a mirror (``--base-url``) serves the URL-list images: <host>/<path> under it.
URL_IMAGES_MIRROR = "fashioniq/url_images"


# --- placing files -----------------------------------------------------------------------

def place_file(source: Path, dest: Path, method: str = "copy") -> None:
    """Put ``source`` at ``dest`` via a temporary name and an atomic rename."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.placing")
    tmp.unlink(missing_ok=True)
    try:
        if method == "copy":
            shutil.copyfile(source, tmp)
        elif method == "hardlink":
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or links unsupported
                shutil.copyfile(source, tmp)
        elif method == "symlink":
            os.symlink(source.resolve(), tmp)
        else:
            shutil.move(str(source), tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _scan_images(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` by stem (first found wins, in sorted walk order)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                found.setdefault(path.stem, path)
    return found


def _listing(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries}
    except FileNotFoundError:
        return set()


# --- FashionIQ -------------------------------------------------------------------------------

def fashioniq_split_asins(root: str | Path, categories: Iterable[str] = FIQ_CATEGORIES,
                          splits: Iterable[str] = FIQ_SPLITS) -> dict[str, dict[str, list[str]]]:
    """``split -> category -> ASINs`` from ``root/image_splits`` (read only)."""
    root = Path(root)
    out: dict[str, dict[str, list[str]]] = {}
    for split in splits:
        for category in categories:
            path = root / "image_splits" / f"split.{category}.{split}.json"
            names = read_json(path, list)
            if not all(isinstance(n, str) for n in names):
                raise DatasetFormatError(path, "expected a list of ASIN strings")
            out.setdefault(split, {})[category] = names
    return out


def _needed_asins(root: Path, categories: Iterable[str]) -> set[str]:
    per_split = fashioniq_split_asins(root, categories)
    return {a for cats in per_split.values() for names in cats.values() for a in names}


def _fiq_present(images: Path) -> set[str]:
    """ASINs with an image the loader will find (``<ASIN>.png`` or ``<ASIN>.jpg``)."""
    return {Path(n).stem for n in _listing(images) if Path(n).suffix in (".png", ".jpg")
            and not n.startswith(".")}


def import_fashioniq_images(root: str | Path, source: str | Path, *, method: str = "copy",
                            categories: Iterable[str] = FIQ_CATEGORIES) -> dict:
    """Place the split images found in ``source`` (a folder or zip/tar) at ``root/images``.

    Any layout is accepted: flat, ``image_data/<cat>/``, or nested inside a top folder;
    files are matched by ASIN (the file stem) against the split files. Images already in
    place are left alone; files that match no split entry are counted and ignored.
    """
    root, source = Path(root), Path(source)
    categories = tuple(categories)
    needed = _needed_asins(root, categories)
    images = root / "images"
    staging: Path | None = None
    if source.is_file():
        staging = root / ".images-import"
        extract_archive(source, staging)
        scan_root, method = staging, "move"
    elif source.is_dir():
        scan_root = source
    else:
        raise LayoutError(f"{source}: no such file or folder to import FashionIQ images from")
    try:
        found = _scan_images(scan_root)
        present = _fiq_present(images)
        placed = skipped = 0
        for asin, path in found.items():
            if asin not in needed:
                continue
            if asin in present:
                skipped += 1
                continue
            place_file(path, images / f"{asin}{IMAGE_SUFFIXES[path.suffix.lower()]}", method)
            placed += 1
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    unmatched = sum(1 for asin in found if asin not in needed)
    log.info("FashionIQ images from %s: %d placed, %d already present, %d files matched no "
             "split entry", source, placed, skipped, unmatched)
    return {"source": str(source), "method": method, "found": len(found), "placed": placed,
            "already_present": skipped, "not_in_splits": unmatched}


def parse_asin2url(path: str | Path) -> dict[str, str]:
    """``asin2url.<cat>.txt``: one ``ASIN \\t URL`` (space, tab, space) per line."""
    path = Path(path)
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetFormatError(path, "file not found") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(" \t ")
        if len(parts) != 2:
            parts = line.split()
        if len(parts) != 2 or not parts[1].strip().startswith(("http://", "https://")):
            raise DatasetFormatError(path, f"expected 'ASIN \\t URL', got {line!r}",
                                     record=f"line {number}")
        out[parts[0].strip()] = parts[1].strip()
    return out


def _sniff(path: Path) -> str | None:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    return None


def mirror_image_url(url: str, base_url: str) -> str:
    """Where a mirror serves a URL-list image: ``<base_url>/fashioniq/url_images/<host>/
    <path>`` (the upstream URL's host and path; a query string is not part of it)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.path.strip("/"):
        raise DownloadError(f"{url}: cannot be mirrored (no host or path)")
    return (base_url.rstrip("/") + "/"
            + quote(f"{URL_IMAGES_MIRROR}/{parts.hostname}/{parts.path.lstrip('/')}"))


def fetch_fashioniq_images(root: str | Path, url_lists: Mapping[str, str | Path], *,
                           workers: int = 8, retries: int = 1, timeout: float = 20.0,
                           backoff: float = 0.5, max_unreachable: int = 50,
                           progress: bool = True, base_url: str | None = None) -> dict:
    """Download split images from the per-ASIN URL lists; dead links are skipped.

    Continues past every per-image error (404, not an image, timeouts) and records it;
    stops with :class:`OfflineError` only after ``max_unreachable`` consecutive images
    whose host could not be reached (the machine is then most likely offline).
    With ``base_url`` every image comes from that mirror instead (:func:`mirror_image_url`);
    an image the mirror lacks is a failure like a dead link.
    """
    root = Path(root)
    images = root / "images"
    incoming = images / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    needed = _needed_asins(root, url_lists)
    urls: dict[str, str] = {}
    for path in url_lists.values():
        for asin, url in parse_asin2url(path).items():
            if asin in needed:
                urls.setdefault(asin, url)
    if base_url:
        urls = {asin: mirror_image_url(url, base_url) for asin, url in urls.items()}
    present = _fiq_present(images)
    todo = sorted(a for a in urls if a not in present)
    failures: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    state = {"unreachable": 0, "fetched": 0}

    def fetch(asin: str) -> None:
        if stop.is_set():
            return
        tmp = incoming / asin
        try:
            download(urls[asin], tmp, retries=retries, backoff=backoff, timeout=timeout,
                     progress=False, record=False)
            suffix = _sniff(tmp)
            if suffix is None:
                raise DownloadError(f"{urls[asin]}: not a JPEG or PNG image (dead link)")
            os.replace(tmp, images / f"{asin}{suffix}")
        except (DownloadError, OSError) as err:
            tmp.unlink(missing_ok=True)
            part_path(tmp).unlink(missing_ok=True)
            with lock:
                failures[asin] = str(err)
                if isinstance(err, OfflineError):
                    state["unreachable"] += 1
                    if state["unreachable"] >= max_unreachable:
                        stop.set()
                else:
                    state["unreachable"] = 0
            log.debug("skipping %s: %s", asin, err)
            return
        with lock:
            state["fetched"] += 1
            state["unreachable"] = 0

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(todo), desc="FashionIQ images", unit="img",
                 disable=not progress, mininterval=2.0) as bar:
        for _ in pool.map(fetch, todo):
            bar.update(1)
    shutil.rmtree(incoming, ignore_errors=True)
    if stop.is_set():
        example = next(iter(failures.values()), "")
        raise OfflineError(f"stopped fetching FashionIQ images after {max_unreachable} "
                           f"consecutive unreachable hosts ({state['fetched']} fetched before "
                           f"that); this machine may be offline. Last error: {example}")
    no_url = sorted(needed - set(urls) - present)
    log.info("FashionIQ images from URLs: %d fetched, %d already present, %d failed, %d "
             "without a URL", state["fetched"], len(urls) - len(todo), len(failures),
             len(no_url))
    return {"fetched": state["fetched"], "already_present": len(urls) - len(todo),
            "failed": len(failures), "failures": dict(sorted(failures.items())),
            "without_url": no_url, "mirror": base_url or None}


def fashioniq_image_report(root: str | Path,
                           categories: Iterable[str] = FIQ_CATEGORIES) -> dict:
    """Per split and category: images in the split file, present, missing (with ASINs) and
    how many queries lose their reference or target image."""
    root = Path(root)
    categories = tuple(categories)
    per_split = fashioniq_split_asins(root, categories)
    present = _fiq_present(root / "images")
    splits: dict[str, dict] = {}
    all_needed: set[str] = set()
    for split, cats in per_split.items():
        for category, names in cats.items():
            all_needed.update(names)
            missing = sorted(set(names) - present)
            entry: dict = {"images": len(names), "present": len(names) - len(missing),
                           "missing": len(missing), "missing_asins": missing,
                           "queries": None, "queries_affected": None}
            caption_file = root / "captions" / f"cap.{category}.{split}.json"
            if caption_file.is_file():
                records = read_json(caption_file, list)
                lost = set(missing)
                entry["queries"] = len(records)
                entry["queries_affected"] = sum(
                    1 for r in records if isinstance(r, dict)
                    and (r.get("candidate") in lost or r.get("target") in lost))
            splits.setdefault(split, {})[category] = entry
    missing_total = len(all_needed - present)
    return {"dataset": "fashioniq", "root": str(root), "images_dir": str(root / "images"),
            "splits": splits,
            "totals": {"unique_images": len(all_needed),
                       "present": len(all_needed) - missing_total,
                       "missing": missing_total},
            "complete": missing_total == 0,
            "note": "split files are never edited; queries whose images are missing stay in "
                    "the benchmark and are counted as 'queries_affected'"}


def link_image_data(root: str | Path, categories: Iterable[str] = FIQ_CATEGORIES,
                    splits: Iterable[str] = ("val",)) -> int:
    """``root/image_data/<cat>/<ASIN>.jpg`` symlinks to ``root/images`` (the VAL/HP-FashionIQ
    layout), for every present split image; returns how many links were made."""
    root = Path(root)
    images = root / "images"
    listing = _listing(images)
    made = 0
    for cats in fashioniq_split_asins(root, categories, splits).values():
        for category, names in cats.items():
            folder = root / "image_data" / category
            folder.mkdir(parents=True, exist_ok=True)
            for asin in names:
                link = folder / f"{asin}.jpg"
                if link.exists() or link.is_symlink():
                    continue
                name = next((f"{asin}{s}" for s in (".jpg", ".png")
                             if f"{asin}{s}" in listing), None)
                if name is None:
                    continue
                os.symlink(os.path.relpath(images / name, folder), link)
                made += 1
    return made


# --- CIRR ----------------------------------------------------------------------------------

def cirr_expected_images(root: str | Path,
                         splits: Iterable[str] = CIRR_SPLITS) -> dict[str, dict[str, str]]:
    root = Path(root)
    out: dict[str, dict[str, str]] = {}
    for split in splits:
        path = root / "cirr" / "image_splits" / f"split.rc2.{split}.json"
        mapping = read_json(path, dict)
        for name, rel in mapping.items():
            if not isinstance(rel, str):
                raise DatasetFormatError(path, f"expected a relative path, got {rel!r}",
                                         record=name)
        out[split] = mapping
    return out


def _rel_path(root: Path, rel: str) -> Path:
    return root.joinpath(*[p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")])


def check_cirr_images(root: str | Path, splits: Iterable[str] = CIRR_SPLITS) -> dict:
    """Images expected by the split files versus what is on disk, per split."""
    root = Path(root)
    report: dict = {"dataset": "cirr", "root": str(root), "splits": {}, "hints": []}
    listings: dict[Path, set[str]] = {}
    complete = True
    for split, mapping in cirr_expected_images(root, splits).items():
        missing = []
        for name, rel in mapping.items():
            path = _rel_path(root, rel)
            names = listings.get(path.parent)
            if names is None:
                names = listings[path.parent] = _listing(path.parent)
            if path.name not in names:
                missing.append(name)
        complete &= not missing
        report["splits"][split] = {
            "images": len(mapping), "present": len(mapping) - len(missing),
            "missing": len(missing), "missing_examples": missing[:MISSING_EXAMPLES],
            "example_path": next(iter(mapping.values()), None)}
    report["complete"] = complete
    flat = [n for n in _listing(root / "train") if n.endswith(".png")]
    if flat:
        report["hints"].append(
            f"{len(flat)} train images sit directly in {root / 'train'}; the split file "
            "expects them in numbered sub-folders train/<NN>/ (rerun fetch_images.py with "
            f"--from-folder {root / 'train'} to arrange them)")
    if (root / "img_raw").is_dir():
        report["hints"].append(
            f"{root / 'img_raw'} exists (the CIRR README layout); the loaders expect "
            f"train/, dev/, test1/ directly under {root} (rerun with --from-folder "
            f"{root / 'img_raw'})")
    return report


def cirr_instructions(report: dict) -> str:
    root = report["root"]
    counts = ", ".join(f"{split} {entry['missing']} of {entry['images']}"
                       for split, entry in report["splits"].items())
    lines = [
        f"CIRR images are missing under {root} ({counts}).",
        "CIRR images are the NLVR2 raw images and cannot be downloaded automatically:",
        f"  1. Fill in the NLVR2 request form ('direct image download', {NLVR2_URL}); if "
        f"the NLVR2 team does not answer, e-mail the CIRR authors ({CIRR_URL}) saying you "
        "filled in the form.",
        f"  2. Unpack so that every path in {root}/cirr/image_splits/split.rc2.<split>.json "
        f"exists under {root}: train images in {root}/train/<NN>/<name>.png (the numbered "
        f"NLVR2 sub-folders 0..99), val images in {root}/dev/<name>.png, test images in "
        f"{root}/test1/<name>.png.",
        "  3. If your copy is flat or in another layout, run workflow_scripts/fetch_images.py "
        f"--dataset cirr --root {root} --from-folder <your folder>; it places each file where "
        "the split file says (matching by file name).",
    ]
    for split, entry in report["splits"].items():
        if entry["missing_examples"]:
            lines.append(f"  e.g. {split}: {', '.join(entry['missing_examples'][:3])}")
    lines += [f"  note: {hint}" for hint in report.get("hints", [])]
    return "\n".join(lines)


def require_cirr_images(report: dict) -> None:
    if not report["complete"]:
        raise LayoutError(cirr_instructions(report))


def arrange_cirr_images(root: str | Path, source: str | Path, *, method: str = "copy",
                        splits: Iterable[str] = CIRR_SPLITS) -> dict:
    """Place the NLVR2/CIRR images found anywhere under ``source`` at the split-file paths."""
    root, source = Path(root), Path(source)
    if not source.is_dir():
        raise LayoutError(f"{source}: not a folder of CIRR images")
    expected = cirr_expected_images(root, splits)
    by_file: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            by_file.setdefault(name, Path(dirpath) / name)
    placed = already = 0
    for mapping in expected.values():
        for rel in mapping.values():
            dest = _rel_path(root, rel)
            found = by_file.get(dest.name)
            if dest.exists():
                already += 1
            elif found is not None and found.resolve() != dest.resolve():
                place_file(found, dest, method)
                placed += 1
    log.info("CIRR images from %s: %d placed, %d already in place", source, placed, already)
    return {"source": str(source), "method": method, "placed": placed,
            "already_present": already}


# --- CIRCO / COCO --------------------------------------------------------------------------

def check_circo_images(root: str | Path) -> dict:
    """The COCO unlabeled2017 gallery index and how many of its images are on disk."""
    root = Path(root)
    coco = root / "COCO2017_unlabeled"
    info_path = coco / "annotations" / "image_info_unlabeled2017.json"
    report: dict = {"dataset": "circo", "root": str(root), "image_info": str(info_path),
                    "images_dir": str(coco / "unlabeled2017")}
    if not info_path.is_file():
        report.update(images=None, present=None, missing=None, complete=False,
                      error=f"{info_path} not found (extract image_info_unlabeled2017.zip "
                            f"into {coco})")
        return report
    info = read_json(info_path, dict)
    images = info.get("images")
    if not isinstance(images, list):
        raise DatasetFormatError(info_path, "missing the 'images' list")
    files: dict[str, str] = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DatasetFormatError(info_path, "expected {id, file_name}",
                                     record=f"images[{i}]")
        files[str(image["id"])] = str(image["file_name"])
    on_disk = _listing(coco / "unlabeled2017")
    missing = [i for i, name in files.items() if name not in on_disk]
    report.update(images=len(files), present=len(files) - len(missing), missing=len(missing),
                  missing_examples=missing[:MISSING_EXAMPLES], complete=not missing,
                  extra_files=len(on_disk - set(files.values())))
    queries: dict[str, dict] = {}
    for split in CIRCO_SPLITS:
        path = root / "annotations" / f"{split}.json"
        if not path.is_file():
            continue
        needed: set[str] = set()
        for record in read_json(path, list):
            if isinstance(record, dict):
                for key in ("reference_img_id", "target_img_id"):
                    if key in record:
                        needed.add(str(record[key]))
                needed.update(str(g) for g in record.get("gt_img_ids", []) or [])
        lost = sorted(n for n in needed if files.get(n) not in on_disk)
        queries[split] = {"query_images": len(needed), "missing": len(lost),
                          "missing_examples": lost[:MISSING_EXAMPLES]}
    report["query_images"] = queries
    return report
