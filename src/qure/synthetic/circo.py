"""mini-CIRCO: CIRCO's files over a COCO-unlabeled-shaped gallery (research/datasets.md §3).

``annotations/{val,test}.json``, ``COCO2017_unlabeled/annotations/
image_info_unlabeled2017.json`` and ``COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg``.
Same scene world as mini-CIRR (the paper evaluates CIRCO zero-shot with the CIRR model) but
its own gallery. A query requires the changed attributes plus the shared concept; one
unchanged attribute may be left free, and the ground truths are *every* gallery image that
satisfies the requirement, the target first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qure.synthetic.common import (
    NUMBER_WORDS,
    BenchmarkBuild,
    Design,
    ImageJob,
    JsonFile,
    pick,
    relpath,
    sample_count,
    shuffled,
    substream,
    unique_ints,
)
from qure.synthetic.scenes import SCENE, counted, noun, paint_scene, plural, with_article
from qure.synthetic.sizes import CIRCOSizes
from qure.synthetic.world import encode_designs, matching_mask, oracle_document

NAME = "circo"
MAX_GROUND_TRUTHS = 23  # loaders pad gt_img_ids to 23 (CIRCO src/dataset.py)
COCO_MAX_ID = 581_930
EDIT_COUNT_PROBS = (0.5, 0.35, 0.15)
FREE_ATTRIBUTE_PROB = 0.5  # P(one unchanged attribute is neither kept nor changed)
# Only attributes with few values may be left free: freeing a six-valued one (the
# background) would make dozens of gallery images ground truths.
FREEABLE = ("size", "count")
GALLERY_GROUPS = (0.7, 0.2, 0.1)  # near-duplicate groups in the gallery
ASPECT_ORDER = ("cardinality", "addition", "negation", "direct_addressing", "compare_change",
                "comparative_statement", "statement_with_conjunction",
                "spatial_relations_background", "viewpoint")
IMAGES_DIR = ("COCO2017_unlabeled", "unlabeled2017")
INFO_FILE = ("COCO2017_unlabeled", "annotations", "image_info_unlabeled2017.json")


# --- captions -----------------------------------------------------------------------------

def _clause(rng: np.random.Generator, attribute: str, ref: dict[str, str],
            tgt: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """A descriptive clause ('shows two stars', 'is on a green background') and the
    CIRCO semantic aspects it exercises."""
    count, ref_count, kind = int(tgt["count"]), int(ref["count"]), tgt["kind"]
    if attribute == "kind":
        new, old = with_article(kind, count), with_article(ref["kind"], ref_count)
        return pick(rng, ((f"has {new} instead of {old}", ("compare_change",)),
                          (f"shows {new} rather than {old}", ("compare_change",)),
                          (f"has no {plural(ref['kind'])} but {new}", ("negation",))))
    if attribute == "count":
        options = [(f"shows {counted(kind, count)}", ("cardinality",))]
        if count > ref_count:
            options.append((f"has {NUMBER_WORDS[count - ref_count]} more "
                            f"{noun(kind, count - ref_count)}", ("cardinality", "addition")))
        else:
            options.append((f"shows only {counted(kind, count)}", ("cardinality",)))
        return pick(rng, options)
    if attribute == "color":
        color, old = tgt["color"], ref["color"]
        verb = "is" if count == 1 else "are"
        return pick(rng, ((f"the {noun(kind, count)} {verb} {color}", ("direct_addressing",)),
                          (f"has {with_article(kind, count, color)}", ("direct_addressing",)),
                          (f"has {with_article(kind, count)} that {verb} not {old} but {color}",
                           ("negation", "direct_addressing"))))
    if attribute == "background":
        background = tgt["background"]
        return pick(rng, ((f"is on a {background} background", ("spatial_relations_background",)),
                          (f"has a {background} background", ("spatial_relations_background",)),
                          (f"has a {background} background instead of a {ref['background']} one",
                           ("spatial_relations_background", "compare_change"))))
    if attribute == "size":
        word = "larger" if tgt["size"] == "large" else "smaller"
        return pick(rng, ((f"has {with_article(kind, count, word)}", ("comparative_statement",)),
                          (f"shows {word} shapes", ("comparative_statement",))))
    raise ValueError(f"unknown scene attribute {attribute!r}")


def circo_caption(rng: np.random.Generator, reference: Design, target: Design,
                  changed: list[str]) -> tuple[str, list[str]]:
    """(relative caption, semantic aspects) for one query."""
    ref, tgt = SCENE.as_dict(reference), SCENE.as_dict(target)
    # What the objects are and how many come first; later clauses refer to them.
    leading = [a for a in ("kind", "count") if a in changed]
    order = leading + shuffled(rng, [a for a in changed if a not in leading])
    clauses = [_clause(rng, a, ref, tgt) for a in order]
    aspects = {aspect for _, tags in clauses for aspect in tags}
    if len(clauses) > 1:
        aspects.add("statement_with_conjunction")
    return " and ".join(text for text, _ in clauses), [a for a in ASPECT_ORDER if a in aspects]


def shared_concept(reference: dict[str, str], shared: list[str]) -> str:
    """What reference and targets have in common: 'a single red star', 'two large shapes
    on a gray background', 'green shapes'."""
    count = int(reference["count"])
    words = []
    if "count" in shared:
        words.append("a single" if count == 1 else NUMBER_WORDS[count])
    words += [reference[a] for a in ("size", "color") if a in shared]
    singular = "count" in shared and count == 1
    thing = reference["kind"] if "kind" in shared else "shape"
    words.append(thing if singular else plural(thing))
    text = " ".join(words)
    if "background" in shared:
        text += f" on a {reference['background']} background"
    return text


# --- benchmark ----------------------------------------------------------------------------

class _Gallery:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.designs: list[Design] = []
        self.render_seeds: list[int] = []

    def add(self, design: Design) -> int:
        self.designs.append(design)
        self.render_seeds.append(int(self.rng.integers(2**62)))
        return len(self.designs) - 1


def _plan_query(rng: np.random.Generator, gallery: _Gallery, reference: int,
                sizes: CIRCOSizes) -> dict[str, Any]:
    """Edit the reference, decide what the query requires, and plant matching images."""
    ref_design = gallery.designs[reference]
    edits = SCENE.choose_edits(rng, EDIT_COUNT_PROBS)
    target_design = SCENE.edit(rng, ref_design, edits)
    unchanged = [a for a in SCENE.attributes if a not in edits]
    freeable = [a for a in unchanged if a in FREEABLE]
    free = [pick(rng, freeable)] if freeable and rng.random() < FREE_ATTRIBUTE_PROB else []
    target = SCENE.as_dict(target_design)
    required = {a: target[a] for a in SCENE.attributes if a not in free}
    planted = [gallery.add(target_design)]
    for _ in range(sample_count(rng, sizes.extra_ground_truths)):
        planted.append(gallery.add(SCENE.sample(rng, **required)))
    caption, aspects = circo_caption(rng, ref_design, target_design, edits)
    shared = [a for a in unchanged if a not in free]
    return {"reference": reference, "target": planted[0], "required": required,
            "changed": edits, "free": free, "caption": caption, "aspects": aspects,
            "shared_concept": shared_concept(SCENE.as_dict(ref_design), shared)}


def _ground_truths(codes: np.ndarray, ids: list[int], plan: dict[str, Any]) -> list[int]:
    """Every gallery image satisfying the query, target first, then by id."""
    mask = matching_mask(SCENE, codes, plan["required"])
    others = sorted(ids[i] for i in np.flatnonzero(mask) if i != plan["target"])
    return [ids[plan["target"]], *others]


def _date(rng: np.random.Generator) -> str:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = (int(v) for v in rng.integers(0, (24, 60, 60)))
    return f"2013-{month:02d}-{day:02d} {hh:02d}:{mm:02d}:{ss:02d}"


def _image_info(rng: np.random.Generator, ids: list[int], size: int) -> dict[str, Any]:
    images = [{"license": int(rng.integers(1, 7)), "file_name": f"{i:012d}.jpg",
               "coco_url": f"http://images.cocodataset.org/unlabeled2017/{i:012d}.jpg",
               "height": size, "width": size, "date_captured": _date(rng), "id": i}
              for i in sorted(ids)]
    return {
        "info": {"description": "Synthetic stand-in for COCO 2017 Unlabeled (qure.synthetic)",
                 "url": "", "version": "1.0", "year": 2017, "contributor": "qure.synthetic",
                 "date_created": "2017/09/01"},
        "licenses": [{"url": "", "id": i, "name": "synthetic"} for i in range(1, 7)],
        "images": images,
        "categories": [],
    }


def build_circo(seed: int, sizes: CIRCOSizes, image_size: int) -> BenchmarkBuild:
    """mini-CIRCO's files, image jobs and oracle."""
    rng = substream(seed, NAME)
    gallery = _Gallery(rng)
    n_queries = sizes.val_queries + sizes.test_queries
    mean_planted = 1 + sum(i * p for i, p in enumerate(sizes.extra_ground_truths))
    n_base = max(n_queries, sizes.gallery - round(n_queries * mean_planted))
    while len(gallery.designs) < n_base:
        design = SCENE.sample(rng)
        for _ in range(min(sample_count(rng, GALLERY_GROUPS, start=1),
                           n_base - len(gallery.designs))):
            gallery.add(design)
    references = [int(i) for i in rng.choice(n_base, size=n_queries, replace=False)]
    plans = [_plan_query(rng, gallery, ref, sizes) for ref in references]
    ids = unique_ints(rng, len(gallery.designs), 1, COCO_MAX_ID)
    codes = encode_designs(SCENE, gallery.designs)
    for plan in plans:
        plan["gt"] = _ground_truths(codes, ids, plan)
    # A query with more ground truths than the loaders can hold would be mis-scored.
    plans = [p for p in plans if len(p["gt"]) <= MAX_GROUND_TRUTHS]
    val, test = plans[: sizes.val_queries], plans[sizes.val_queries:]

    records: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
    oracle_queries: dict[str, dict[str, Any]] = {"val": {}, "test": {}}
    for split, split_plans in (("val", val), ("test", test)):
        for index, plan in enumerate(split_plans):
            reference, target = ids[plan["reference"]], ids[plan["target"]]
            if split == "val":
                records[split].append({
                    "reference_img_id": reference, "target_img_id": target,
                    "relative_caption": plan["caption"], "shared_concept": plan["shared_concept"],
                    "gt_img_ids": plan["gt"], "id": index, "semantic_aspects": plan["aspects"]})
            else:
                records[split].append({
                    "reference_img_id": reference, "relative_caption": plan["caption"],
                    "shared_concept": plan["shared_concept"], "id": index})
            oracle_queries[split][str(index)] = {
                "reference": str(reference), "target": str(target),
                "required": plan["required"], "changed": plan["changed"], "free": plan["free"]}

    files = [JsonFile(relpath(NAME, "annotations", f"{split}.json"), records[split], indent=4)
             for split in ("val", "test")]
    files.append(JsonFile(relpath(NAME, *INFO_FILE), _image_info(rng, ids, image_size),
                          indent=None))
    designs = {str(ids[i]): d for i, d in sorted(enumerate(gallery.designs),
                                                 key=lambda item: ids[item[0]])}
    files.append(JsonFile(relpath(NAME, "oracle.json"),
                          oracle_document(NAME, SCENE, designs, oracle_queries), indent=None))
    images = [ImageJob(relpath(NAME, *IMAGES_DIR, f"{ids[i]:012d}.jpg"), paint_scene, design,
                       gallery.render_seeds[i], "jpeg")
              for i, design in enumerate(gallery.designs)]
    mean_gt = float(np.mean([len(p["gt"]) for p in val])) if val else 0.0
    counts = {"val queries": len(val), "test queries": len(test), "gallery": len(images),
              "mean val ground truths": round(mean_gt, 2)}
    return BenchmarkBuild(NAME, files, images, counts)
