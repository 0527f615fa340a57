"""The rehearsal's fake upstream: real annotation files plus small synthetic stand-ins.

``build_upstream(out, shared, queries, gallery)`` writes:

* ``out/mirror/``: what :class:`~qure.rehearsal.mirror.LoopbackMirror` serves, in the
  mirror layout of ``sources.yaml`` (each file at its ``mirror:`` path):

  - the real annotation files from ``shared`` (FashionIQ captions and image splits, CIRR
    val/test1 captions and the three split files, CIRCO annotations, ``hpfiq.json``),
    byte for byte, so the catalogue's real pins apply to them unchanged;
  - stand-ins for what is not available offline (every one listed in the substitutes
    file): CIRR's train captions (``cap.rc2.train.json``, synthetic records over the real
    train split file's images, three queries per img_set of six), FashionIQ's
    ``asin2url.<cat>.txt`` (every split ASIN with a synthetic Amazon-style URL), COCO's
    ``image_info_unlabeled2017.zip`` (every image id the CIRCO annotations name plus
    :data:`COCO_DISTRACTORS` others) and ``unlabeled2017.zip`` (the images of the
    subset), and LAVIS-format ``blip2_pretrained_vitL.pth`` / ``clip_vit_L.pth`` (every
    real key name, reduced width, random weights) with a small BERT vocabulary;
  - the FashionIQ images of the subset (:data:`IMAGE_SIZE` px JPEGs, a few PNGs behind
    their ``.jpg`` URL as on Amazon) at ``fashioniq/url_images/<host>/<path>`` of their
    listed URL, except those left out on purpose: per split and category
    :data:`MISSING_OTHERS` gallery-only images and :data:`MISSING_REFERENCES` query
    reference (each in no other subset gallery and no comparison of the HP-FashionIQ subset, so
    the expected counts are exact: per split and category 3 gallery images missing and 1
    query dropped);

* ``out/nlvr2/``: the CIRR images of the subset in the NLVR2 layout (``train/NN/``,
  ``dev/``, ``test1/``), the folder given as ``data.real.cirr_images``;
* ``out/substitutes.yaml``: every stand-in with its size and sha256 (``--substitutes``);
* ``out/upstream.json``: the subset size, the images left out (per split and category,
  with the counts the pipeline must report) and the files written.

The subset's images are found with :func:`qure.data.subset.plan_subset` on roots laid out
as the fetch step lays them out (``out/staging/``), the code path the ``subset_dataset``
rule runs, so the upstream holds exactly the images a subset run fetches.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import shutil
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image, ImageDraw

from qure.data import CIRCO, CIRR, FashionIQ, HPFashionIQ
from qure.data.subset import SubsetPlan, hp_subset, hp_subset_images, plan_subset
from qure.download.layout import URL_IMAGES_MIRROR, parse_asin2url
from qure.download.sources import SourceFile, load_sources
from qure.errors import ConfigError
from qure.io import atomic_write_bytes, atomic_write_json, read_json
from qure.rehearsal.weights import model_config, rehearsal_vocab, write_lavis_files

log = logging.getLogger(__name__)

UPSTREAM_MANIFEST = "upstream.json"
SUBSTITUTES_FILE = "substitutes.yaml"
IMAGE_SIZE = 64
MISSING_OTHERS = 2
"""FashionIQ gallery-only images left out of the upstream per split and category."""
MISSING_REFERENCES = 1
"""FashionIQ query references left out of the upstream per split and category."""
COCO_DISTRACTORS = 64
FIQ_HOSTS = ("ecx.images-amazon.com", "g-ecx.images-amazon.com")
REASON = ("qure offline rehearsal (tools/paper_rehearsal.py): a synthetic stand-in served "
          "by a loopback mirror, not the upstream file")
DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")
_ZIP_TIME = (2017, 1, 1, 0, 0, 0)


@dataclass
class Upstream:
    """Where :func:`build_upstream` put things, and its manifest."""

    root: Path
    mirror: Path
    nlvr2: Path
    substitutes: Path
    manifest: dict[str, Any]


# --- small helpers ---------------------------------------------------------------------------


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


def synthetic_image(name: str, fmt: str = "JPEG", size: int = IMAGE_SIZE) -> bytes:
    """A deterministic picture for ``name``: a background colour, a shape and a band."""
    d = _digest(name)
    image = Image.new("RGB", (size, size), (d[0], d[1], d[2]))
    draw = ImageDraw.Draw(image)
    a, b = 4 + d[3] % (size // 3), 4 + d[4] % (size // 3)
    box = (a, b, min(size - 2, a + size // 3 + d[5] % (size // 3)),
           min(size - 2, b + size // 3 + d[6] % (size // 3)))
    fill = (255 - d[0], d[7], 255 - d[2])
    (draw.ellipse if d[8] % 2 else draw.rectangle)(box, fill=fill)
    draw.line((0, d[9] % size, size, d[10] % size), fill=(d[11], 255 - d[1], d[12]), width=3)
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def _zip_bytes(members: Mapping[str, bytes]) -> bytes:
    """A zip of ``members`` with fixed timestamps (the same bytes on every build)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return out.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


# --- the stand-ins ------------------------------------------------------------------------------


def cirr_train_captions(split_file: Path) -> list[dict]:
    """CIRR train records in the real format over the real train split file's images:
    consecutive groups of six images form an img_set; each set gives three queries
    (members 0->1, 2->3, 4->5). Captions are synthetic."""
    names = list(read_json(split_file, dict))
    records = []
    verbs = ("add", "remove", "change", "show", "make")
    for set_id in range(len(names) // 6):
        members = names[6 * set_id: 6 * set_id + 6]
        for k in range(3):
            reference, target = members[2 * k], members[2 * k + 1]
            pairid = 3 * set_id + k
            verb = verbs[pairid % len(verbs)]
            records.append({
                "pairid": pairid, "reference": reference, "target_hard": target,
                "target_soft": {target: 1.0},
                "caption": f"{verb} the object and show it from another side ({pairid})",
                "img_set": {"id": set_id, "members": members, "reference_rank": 2 * k,
                            "target_rank": 2 * k + 1}})
    return records


def asin2url_lines(asins: list[str]) -> str:
    """``ASIN \\t URL`` lines (space, tab, space) with synthetic Amazon-style URLs."""
    lines = []
    for asin in asins:
        d = _digest(asin)
        host = FIQ_HOSTS[d[0] % len(FIQ_HOSTS)]
        lines.append(f"{asin} \t http://{host}/images/I/{d[1:9].hex()}.jpg")
    return "\n".join(lines) + "\n"


def coco_image_info(annotations: list[list[dict]], seed: int) -> dict:
    """COCO's unlabeled2017 index: every id the CIRCO annotations name, plus distractors."""
    ids: set[int] = set()
    for records in annotations:
        for r in records:
            ids.add(int(r["reference_img_id"]))
            if "target_img_id" in r:
                ids.add(int(r["target_img_id"]))
            ids.update(int(g) for g in r.get("gt_img_ids", []) or [])
    rng = random.Random(seed)
    extra: set[int] = set()
    while len(extra) < COCO_DISTRACTORS:
        candidate = rng.randrange(1, 600_000)
        if candidate not in ids:
            extra.add(candidate)
    images = [{"license": 1, "file_name": f"{i:012d}.jpg",
               "coco_url": f"http://images.cocodataset.org/unlabeled2017/{i:012d}.jpg",
               "height": IMAGE_SIZE, "width": IMAGE_SIZE,
               "date_captured": "2017-01-01 00:00:00", "id": i}
              for i in sorted(ids | extra)]
    return {"info": {"description": "qure rehearsal stand-in for COCO 2017 Unlabeled Dataset",
                     "version": "1.0", "year": 2017},
            "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
            "images": images, "categories": []}


# --- the builder ---------------------------------------------------------------------------


class _Writer:
    """Writes mirror files and remembers which are stand-ins (for the substitutes)."""

    def __init__(self, mirror: Path, catalogue: dict[str, SourceFile]):
        self.mirror = mirror
        self.catalogue = catalogue
        self.substitutes: dict[str, dict[str, dict]] = {}

    def real(self, entry: SourceFile, source: Path) -> None:
        dest = self.mirror / entry.mirror
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        if entry.sha256 and hashlib.sha256(dest.read_bytes()).hexdigest() != entry.sha256:
            raise ConfigError(f"{source}: does not match the catalogue's sha256 for "
                              f"{entry.dataset}/{entry.path}; the rehearsal serves real "
                              "annotation files unchanged")

    def standin(self, mirror_path: str, data: bytes, note: str) -> Path:
        entry = self.catalogue[mirror_path]
        dest = atomic_write_bytes(self.mirror / mirror_path, data)
        self.substitutes.setdefault(entry.dataset, {})[entry.path] = {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "reason": f"{REASON}: {note}"}
        return dest

    def standin_file(self, mirror_path: str, path: Path, note: str) -> None:
        data = path.read_bytes()
        if path != self.mirror / mirror_path:
            atomic_write_bytes(self.mirror / mirror_path, data)
        entry = self.catalogue[mirror_path]
        self.substitutes.setdefault(entry.dataset, {})[entry.path] = {
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "reason": f"{REASON}: {note}"}


def _stage(staging: Path, mirror: Path, catalogue: dict[str, SourceFile]) -> dict[str, Path]:
    """Roots laid out as fetch_annotations lays them out, from the mirror's files."""
    roots = {d: staging / d for d in DATASETS}
    for entry in catalogue.values():
        if entry.dataset in roots and entry.group in ("annotations", "image_urls"):
            dest = entry.dest(roots[entry.dataset])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mirror / entry.mirror, dest)
    return roots


def _choose_missing(plan: SubsetPlan, dataset: FashionIQ, hp_images: set[str]) -> dict:
    """Per FashionIQ split and category: the gallery-only images and query references the
    upstream leaves out (each in exactly one subset gallery and in no HP comparison)."""
    holders = Counter(name for g in plan.galleries.values() for name in g.names)
    out: dict[str, dict] = {}
    for entry in plan.splits:
        names = plan.gallery_of(entry).names
        query_images = set(entry.query_images) | set(entry.extra_images)
        alone = [n for n in names if holders[n] == 1 and n not in hp_images]
        others = [n for n in alone if n not in query_images][:MISSING_OTHERS]
        queries = dataset.load_queries(entry.split, entry.category)[: entry.queries]
        used = Counter(n for q in queries for n in (q.reference, *q.targets))
        references = [q.reference for q in queries if used[q.reference] == 1
                      and q.reference in alone][:MISSING_REFERENCES]
        dropped = [q.query_id for q in queries if q.reference in references]
        out[entry.key] = {
            "gallery_only": others, "references": references,
            "expected": {"gallery_images_missing": len(others) + len(references),
                         "queries_dropped": len(dropped), "gallery_images": len(names),
                         "queries": entry.queries},
            "dropped_queries": dropped}
    return out


def build_upstream(out: str | Path, shared: str | Path, queries: int, gallery: int, *,
                   seed: int = 0, model_overrides: Mapping[str, Any] | None = None,
                   vocab_words: int = 2000) -> Upstream:
    """Write the fake upstream under ``out`` (see the module doc); returns its layout."""
    out, shared = Path(out), Path(shared)
    if not (shared / "SHA256SUMS").is_file():
        raise ConfigError(f"{shared}: not the shared annotation folder (no SHA256SUMS); "
                          "give the folder holding fashioniq/, cirr/, circo/, hp_fashioniq/")
    if out.exists():
        shutil.rmtree(out)
    mirror, nlvr2, staging = out / "mirror", out / "nlvr2", out / "staging"
    catalogue = {f.mirror: f for ds in load_sources().values() for f in ds.files}
    writer = _Writer(mirror, catalogue)

    # 1. Annotation files: the real ones where we have them, a stand-in for CIRR train.
    for entry in catalogue.values():
        if entry.group != "annotations":
            continue
        source = shared / entry.mirror
        if source.is_file():
            writer.real(entry, source)
        elif entry.mirror == "cirr/captions/cap.rc2.train.json":
            records = cirr_train_captions(shared / "cirr/image_splits/split.rc2.train.json")
            writer.standin(entry.mirror, _json_bytes(records),
                           f"{len(records)} synthetic train queries over the real train split")
        else:
            raise ConfigError(f"{source}: real annotation file missing and no stand-in exists")
    # 2. FashionIQ URL lists: every split ASIN of the category, in split order.
    fiq_splits = FashionIQ(shared / "fashioniq")
    for category in ("dress", "shirt", "toptee"):
        asins = list(dict.fromkeys(a for split in ("train", "val", "test")
                                   for a in fiq_splits.load_gallery(split, category).names))
        writer.standin(f"fashioniq/image_url/asin2url.{category}.txt",
                       asin2url_lines(asins).encode("utf-8"),
                       f"{len(asins)} ASINs with synthetic image URLs")
    roots = _stage(staging, mirror, catalogue)

    # 3. COCO's index (needed to cut the CIRCO subset) and the subsets themselves.
    circo_records = [read_json(roots["circo"] / "annotations" / f"{s}.json", list)
                     for s in ("val", "test")]
    info = coco_image_info(circo_records, seed)
    info_path = roots["circo"] / "COCO2017_unlabeled" / "annotations" / \
        "image_info_unlabeled2017.json"
    atomic_write_json(info_path, info, indent=None)
    hp = HPFashionIQ(roots["hp_fashioniq"])
    hp_images = hp_subset_images(hp, queries)
    fiq = FashionIQ(roots["fashioniq"])
    plans = {"fashioniq": plan_subset(fiq, queries, gallery, extra_images=hp_images),
             "cirr": plan_subset(CIRR(roots["cirr"]), queries, gallery),
             "circo": plan_subset(CIRCO(roots["circo"]), queries, gallery)}

    # 4. FashionIQ images at their mirrored URL, less the ones left out on purpose.
    subset_hp = {a for names in hp_images.values() for a in names}
    missing = _choose_missing(plans["fashioniq"], fiq, subset_hp)
    left_out = {a for m in missing.values() for a in (*m["gallery_only"], *m["references"])}
    urls: dict[str, str] = {}
    for category in ("dress", "shirt", "toptee"):
        for asin, url in parse_asin2url(roots["fashioniq"] / "image_url" /
                                        f"asin2url.{category}.txt").items():
            urls.setdefault(asin, url)
    fiq_images = sorted({n for g in plans["fashioniq"].galleries.values() for n in g.names})
    served = 0
    for asin in fiq_images:
        if asin in left_out:
            continue
        host, _, path = urls[asin].split("://", 1)[1].partition("/")
        fmt = "PNG" if _digest(asin)[13] % 8 == 0 else "JPEG"
        atomic_write_bytes(mirror / URL_IMAGES_MIRROR / host / path, synthetic_image(asin, fmt))
        served += 1

    # 5. CIRR images in the NLVR2 layout (the folder data.real.cirr_images names).
    cirr_paths: dict[str, str] = {}
    for split in ("train", "val", "test1"):
        cirr_paths.update(read_json(roots["cirr"] / "cirr" / "image_splits" /
                                    f"split.rc2.{split}.json", dict))
    cirr_images = sorted({n for g in plans["cirr"].galleries.values() for n in g.names})
    for name in cirr_images:
        rel = PurePosixPath(cirr_paths[name].removeprefix("./"))
        atomic_write_bytes(nlvr2.joinpath(*rel.parts), synthetic_image(name, "PNG"))

    # 6. COCO archives: the index, and the subset's images.
    coco_ids = sorted({n for g in plans["circo"].galleries.values() for n in g.names}, key=int)
    files = {str(i["id"]): i["file_name"] for i in info["images"]}
    writer.standin("coco/annotations/image_info_unlabeled2017.zip", _zip_bytes(
        {"annotations/image_info_unlabeled2017.json": info_path.read_bytes()}),
        f"an index of {len(info['images'])} images: every id the CIRCO annotations name "
        f"and {COCO_DISTRACTORS} others")
    writer.standin("coco/zips/unlabeled2017.zip", _zip_bytes(
        {f"unlabeled2017/{files[i]}": synthetic_image(f"coco-{i}") for i in coco_ids}),
        f"the {len(coco_ids)} images of the rehearsal's CIRCO subset")

    # 7. LAVIS weights at reduced width and a small BERT vocabulary.
    texts = [q.text for split in fiq.subsets() for q in fiq.load_queries(*split)]
    texts += [r["caption"] for r in read_json(roots["cirr"] / "cirr" / "captions" /
                                              "cap.rc2.val.json", list)]
    texts += [r["relative_caption"] for rs in circo_records for r in rs]
    texts += [c.sentence for c in hp.comparisons]
    vocab = rehearsal_vocab(texts, vocab_words)
    config = model_config(len(vocab), model_overrides)
    weights = write_lavis_files(out / "weights", vocab, config, seed=seed)
    for role, path in weights.items():
        writer.standin_file(f"weights/{path.name}", path, {
            "blip2": "LAVIS-format BLIP-2 checkpoint with every real key name, reduced "
                     "width, random weights",
            "vit": "LAVIS-format CLIP ViT-L file with every real key name, reduced width, "
                   "random weights",
            "vocab": f"a {len(vocab)}-token BERT vocabulary"}[role])

    substitutes = out / SUBSTITUTES_FILE
    substitutes.write_text(
        "# Written by qure.rehearsal.upstream: the loopback mirror's files that are not the\n"
        "# upstream bytes (format: qure.download.sources). Every other file is real.\n"
        + yaml.safe_dump({"version": 1, "reason": REASON, "files": writer.substitutes},
                         sort_keys=True, width=100), encoding="utf-8")
    manifest = {
        "subset": {"queries": queries, "gallery": gallery}, "seed": seed,
        "mirror": str(mirror), "nlvr2": str(nlvr2), "substitutes": str(substitutes),
        "model_config": {k: v for k, v in config.to_dict().items()
                         if v != getattr(type(config)(), k)},
        "vocab_size": len(vocab),
        "fashioniq": {"images": len(fiq_images), "served": served,
                      "missing": {"rule": f"per split and category {MISSING_OTHERS} "
                                          f"gallery-only image(s) and {MISSING_REFERENCES} "
                                          "query reference(s), each in no other subset "
                                          "gallery and no HP-FashionIQ subset comparison",
                                  "splits": missing,
                                  "total": len(left_out)}},
        "hp_fashioniq": {"comparisons": len(hp_subset(hp, queries)),
                         "images": sum(len(v) for v in hp_images.values()), "missing": 0},
        "cirr": {"images": len(cirr_images), "missing": 0},
        "circo": {"images": len(coco_ids), "index_images": len(info["images"]), "missing": 0},
        "substituted": {d: sorted(v) for d, v in writer.substitutes.items()},
    }
    atomic_write_json(out / UPSTREAM_MANIFEST, manifest)
    shutil.rmtree(staging)
    log.info("fake upstream in %s: %d FashionIQ images (%d left out), %d CIRR, %d COCO",
             out, served, len(left_out), len(cirr_images), len(coco_ids))
    return Upstream(out, mirror, nlvr2, substitutes, manifest)
