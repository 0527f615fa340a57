"""mini-CIRR in the CLIP4Cir/SPRC/QuRe ``cirr_dataset`` layout (research/datasets.md §2).

``cirr/captions/cap.rc2.{train,val,test1}.json`` and ``cirr/image_splits/
split.rc2.{split}.json`` (name -> ``./train/NN/<name>.png``, ``./dev/<name>.png``,
``./test1/<name>.png``) under the benchmark root, images at ``<root>/<relpath>``. Each
img_set is six similar scenes (a base scene and five one- or two-attribute edits of it);
queries pair two members. Some target designs also appear as other split images ("twins"),
which are the false negatives of CIRR mining over all training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qure.synthetic.common import (
    NUMBER_WORDS,
    BenchmarkBuild,
    Design,
    ImageJob,
    JsonFile,
    capitalize_first,
    join_clauses,
    pick,
    relpath,
    sample_count,
    shuffled,
    substream,
    unique_ints,
)
from qure.synthetic.scenes import SCENE, counted, noun, paint_scene, plural, with_article
from qure.synthetic.sizes import CIRRSizes
from qure.synthetic.world import oracle_document

NAME = "cirr"
SPLIT_FOLDERS = {"train": "train", "val": "dev", "test1": "test1"}
SET_SIZE = 6
TRAIN_SUBFOLDERS = 100  # NLVR2's train/0..99
MEMBER_EDIT_PROBS = (0.6, 0.4)  # members differ from the set's base scene in 1 or 2 attributes
MAX_PAIR_DISTANCE = 3
PAIRID_START = 10_000


# --- captions -----------------------------------------------------------------------------

def _description(rng: np.random.Generator, target: dict[str, str], changed: list[str]) -> str:
    """'show three red circles on a blue background': the target, described in full
    where it changed and partly elsewhere (the rest is as in the reference)."""
    count = int(target["count"])
    mention = {a: a in changed or rng.random() < 0.5 for a in ("size", "color", "background")}
    words = [NUMBER_WORDS[count] if count > 1 or rng.random() < 0.5 else "a single"]
    words += [target[a] for a in ("size", "color") if mention[a]]
    words.append(noun(target["kind"], count))
    text = " ".join(words)
    if mention["background"]:
        text += f" on a {target['background']} background"
    return pick(rng, ("show ", "show ", "an image of ", "only ")) + text


def _clause(rng: np.random.Generator, attribute: str, ref: dict[str, str],
            tgt: dict[str, str]) -> str:
    """One imperative edit: 'change the circles to squares', 'add one more star', ..."""
    count, ref_count = int(tgt["count"]), int(ref["count"])
    kind = tgt["kind"]
    them = "it" if count == 1 else "them"
    if attribute == "kind":
        old = "the " + noun(ref["kind"], ref_count)
        return pick(rng, (f"change {old} to {with_article(kind, count)}",
                          f"replace {old} with {with_article(kind, count)}",
                          f"make {them} {with_article(kind, count)} instead"))
    if attribute == "count":
        delta = count - ref_count
        options = [f"make it {counted(kind, count)}", f"show {counted(kind, count)} instead"]
        if delta == 1:
            options += [f"add one more {kind}", f"add another {kind}"]
        elif delta > 1:
            options.append(f"add {NUMBER_WORDS[delta]} more {plural(kind)}")
        elif delta == -1:
            options += [f"remove one {kind}", f"take away one of the {plural(kind)}"]
        else:
            options.append(f"remove {NUMBER_WORDS[-delta]} of the {plural(kind)}")
        if count == 1:
            options.append(f"leave only one {kind}")
        return pick(rng, options)
    if attribute == "color":
        color, old = tgt["color"], ref["color"]
        return pick(rng, (f"make the {noun(kind, count)} {color}", f"change the color to {color}",
                          f"make {them} {color} instead of {old}"))
    if attribute == "background":
        background = tgt["background"]
        return pick(rng, (f"change the background to {background}",
                          f"make the background {background}",
                          f"put {them} on a {background} background",
                          f"use a {background} background"))
    if attribute == "size":
        bigger = tgt["size"] == "large"
        word = pick(rng, ("bigger", "larger")) if bigger else "smaller"
        return pick(rng, (f"make {them} {word}", f"make the {noun(kind, count)} {word}",
                          f"{'enlarge' if bigger else 'shrink'} the {noun(kind, count)}"))
    raise ValueError(f"unknown scene attribute {attribute!r}")


def cirr_caption(rng: np.random.Generator, reference: Design, target: Design,
                 changed: list[str]) -> str:
    """A CIRR-style modification text that pins every changed attribute."""
    ref, tgt = SCENE.as_dict(reference), SCENE.as_dict(target)
    if rng.random() < 0.3:
        text = _description(rng, tgt, changed)
    else:
        # The kind edit goes first so later clauses can name the new objects.
        order = [a for a in changed if a == "kind"] + shuffled(rng, [a for a in changed
                                                                      if a != "kind"])
        text = join_clauses(rng, [_clause(rng, a, ref, tgt) for a in order])
        if "kind" not in changed and "count" in changed and rng.random() < 0.25:
            text = text.replace(f"make it {counted(tgt['kind'], int(tgt['count']))}",
                                f"make it {NUMBER_WORDS[int(tgt['count'])]} objects")
    if rng.random() < 0.35:
        text = capitalize_first(text)
    return text + "." if rng.random() < 0.1 else text


# --- benchmark ----------------------------------------------------------------------------

@dataclass
class _Split:
    """Images and query records of one split, before pair ids are assigned."""

    name: str
    designs: dict[str, Design] = field(default_factory=dict)
    render_seeds: dict[str, int] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    queries: list[dict[str, Any]] = field(default_factory=list)


class _NlvrNames:
    """NLVR2-style names ``<prefix>-<n>-<k>-img<j>``: a few names share each ``n``, and in
    train each ``n`` lives in one of 100 sub-folders."""

    def __init__(self, rng: np.random.Generator, split: str, capacity: int):
        self.rng, self.split, self.prefix = rng, split, SPLIT_FOLDERS[split]
        self.numbers = iter(unique_ints(rng, capacity, 0, 4 * capacity))
        self.pending: list[tuple[int, int, int]] = []
        self.folder = 0

    def __call__(self) -> tuple[str, str]:
        """(name, relative path)."""
        if not self.pending:
            n = next(self.numbers)
            slots = shuffled(self.rng, [(k, j) for k in range(4) for j in range(2)])
            self.pending = [(n, k, j) for k, j in slots[: int(self.rng.integers(1, 4))]]
            self.folder = int(self.rng.integers(TRAIN_SUBFOLDERS))
        n, k, j = self.pending.pop()
        name = f"{self.prefix}-{n}-{k}-img{j}"
        sub = f"{self.folder}/" if self.split == "train" else ""
        return name, f"./{self.prefix}/{sub}{name}.png"


def _choose_pairs(rng: np.random.Generator, designs: list[Design],
                  limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` (reference, target) member pairs 1-3 edits apart, spreading the
    references over the set before reusing one."""
    pairs = [(a, b) for a in range(len(designs)) for b in range(len(designs))
             if a != b and 1 <= len(SCENE.differences(designs[a], designs[b])) <= MAX_PAIR_DISTANCE]
    pairs = shuffled(rng, pairs)
    used_refs = set()
    first = []
    for a, b in pairs:
        if a not in used_refs:
            used_refs.add(a)
            first.append((a, b))
    rest = [p for p in pairs if p not in first]
    return (first + rest)[:limit]


def _soft_targets(target: int, reference: int, members: list[str],
                  designs: list[Design]) -> dict[str, float]:
    """CIRR's ``target_soft``: the target 1.0, other members that equally satisfy the query
    1.0, members one attribute off 0.5."""
    soft = {members[target]: 1.0}
    for index, name in enumerate(members):
        if index in (target, reference):
            continue
        distance = len(SCENE.differences(designs[index], designs[target]))
        if distance <= 1:
            soft[name] = 1.0 if distance == 0 else 0.5
    return soft


def _build_split(seed: int, split: str, n_sets: int, sizes: CIRRSizes) -> _Split:
    rng = substream(seed, NAME, split)
    out = _Split(split)
    # At most six members plus the most twins per query, each needing one name number.
    capacity = max(64, n_sets * (SET_SIZE + (len(sizes.twins) - 1) * sizes.pairs_per_set))
    new_name = _NlvrNames(substream(seed, NAME, split, "names"), split, capacity)

    def new_image(design: Design) -> str:
        name, path = new_name()
        out.designs[name], out.paths[name] = design, path
        out.render_seeds[name] = int(rng.integers(2**62))
        return name

    for set_id in range(n_sets):
        base = SCENE.sample(rng)
        designs = [base] + [SCENE.edit(rng, base, SCENE.choose_edits(rng, MEMBER_EDIT_PROBS))
                            for _ in range(SET_SIZE - 1)]
        members = [new_image(d) for d in designs]  # canonical order: the img_set ranks
        shown = shuffled(rng, members)
        for ref, tgt in _choose_pairs(rng, designs, sizes.pairs_per_set):
            changed = SCENE.differences(designs[ref], designs[tgt])
            out.queries.append({
                "reference": members[ref], "target": members[tgt],
                "target_soft": _soft_targets(tgt, ref, members, designs),
                "caption": cirr_caption(rng, designs[ref], designs[tgt], changed),
                "img_set": {"id": set_id, "members": shown, "reference_rank": ref,
                            "target_rank": tgt},
                "changed": changed,
            })
    targets = list(dict.fromkeys(q["target"] for q in out.queries))
    for target in targets:
        for _ in range(sample_count(rng, sizes.twins)):
            new_image(out.designs[target])
    return out


def _assign_pair_ids(seed: int, splits: list[_Split]) -> list[list[int]]:
    """Unique, increasing pair ids per split, interleaved across splits as in the release."""
    total = sum(len(s.queries) for s in splits)
    rng = substream(seed, NAME, "pairids")
    ids = sorted(unique_ints(rng, total, PAIRID_START, PAIRID_START + 3 * total + 10))
    owners = shuffled(rng, [i for i, s in enumerate(splits) for _ in s.queries])
    per_split: list[list[int]] = [[] for _ in splits]
    for pair_id, owner in zip(ids, owners, strict=True):
        per_split[owner].append(pair_id)
    return per_split


def _record(query: dict[str, Any], pair_id: int, split: str) -> dict[str, Any]:
    img_set = query["img_set"]
    if split == "test1":
        return {"pairid": pair_id, "reference": query["reference"], "caption": query["caption"],
                "img_set": {"id": img_set["id"], "members": img_set["members"],
                            "reference_rank": img_set["reference_rank"]}}
    return {"pairid": pair_id, "reference": query["reference"],
            "target_hard": query["target"], "target_soft": query["target_soft"],
            "caption": query["caption"], "img_set": dict(img_set)}


def build_cirr(seed: int, sizes: CIRRSizes) -> BenchmarkBuild:
    """mini-CIRR's files, image jobs and oracle."""
    set_counts = {"train": sizes.train_sets, "val": sizes.val_sets, "test1": sizes.test_sets}
    splits = [_build_split(seed, split, n, sizes) for split, n in set_counts.items()]
    files: list[JsonFile] = []
    images: list[ImageJob] = []
    designs: dict[str, Design] = {}
    oracle_queries: dict[str, dict[str, Any]] = {}
    for split, pair_ids in zip(splits, _assign_pair_ids(seed, splits), strict=True):
        records = [_record(q, pid, split.name) for q, pid in zip(split.queries, pair_ids,
                                                                 strict=True)]
        order = shuffled(substream(seed, NAME, split.name, "order"), list(split.paths))
        files.append(JsonFile(relpath(NAME, "cirr", "captions", f"cap.rc2.{split.name}.json"),
                              records, indent=None))
        files.append(JsonFile(relpath(NAME, "cirr", "image_splits",
                                      f"split.rc2.{split.name}.json"),
                              {name: split.paths[name] for name in order}, indent=None))
        oracle_queries[split.name] = {
            str(pid): {"reference": q["reference"], "target": q["target"],
                       "required": SCENE.as_dict(split.designs[q["target"]]),
                       "changed": q["changed"]}
            for q, pid in zip(split.queries, pair_ids, strict=True)}
        designs.update(split.designs)
        images += [ImageJob(relpath(NAME, split.paths[name][2:]), paint_scene, design,
                            split.render_seeds[name], "png")
                   for name, design in split.designs.items()]
    files.append(JsonFile(relpath(NAME, "oracle.json"),
                          oracle_document(NAME, SCENE, designs, oracle_queries), indent=None))
    counts = {f"{s.name} pairs": len(s.queries) for s in splits}
    counts["images"] = len(images)
    return BenchmarkBuild(NAME, files, images, counts)
