"""mini-FashionIQ in the CLIP4Cir/SPRC/QuRe layout (see research/datasets.md §1).

Per category and split: ``captions/cap.{cat}.{split}.json`` (triplets; test without
``target``), ``image_splits/split.{cat}.{split}.json`` (the split's ASINs) and
``images/<ASIN>.png``. Targets come in groups of images that share one design, so most
training targets have identical-looking siblings among the category's training targets:
exactly the false negatives QuRe's hard-negative rule is designed to skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qure.synthetic.common import (
    BenchmarkBuild,
    Design,
    ImageJob,
    JsonFile,
    capitalize_first,
    pick,
    relpath,
    sample_count,
    shuffled,
    substream,
)
from qure.synthetic.garments import CATEGORIES, FASHION, GARMENT_COLORS, paint_garment
from qure.synthetic.render import luminance
from qure.synthetic.sizes import FashionIQSizes
from qure.synthetic.world import oracle_document

NAME = "fashioniq"
SPLITS = ("train", "val", "test")
ASIN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NOUNS = {"dress": ("dress",), "shirt": ("shirt",), "toptee": ("top", "tee", "t-shirt")}
EDIT_COUNT_PROBS = (0.45, 0.35, 0.2)  # 1, 2 or 3 attributes change per triplet
EDIT_WEIGHTS = {"color": 1.6, "pattern": 1.0, "sleeves": 1.0, "neckline": 0.8, "logo": 0.8}
REFERENCE_TRIES = 12


# --- captions -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Phrase:
    """A predicate such as ("is", "red") or ("has", "long sleeves")."""

    verb: str
    rest: str


SPECIFIC: dict[str, dict[str, tuple[Phrase, ...]]] = {
    "pattern": {
        "solid": (Phrase("is", "solid"), Phrase("is", "a solid color"),
                  Phrase("has", "no pattern"), Phrase("is", "plain")),
        "stripes": (Phrase("is", "striped"), Phrase("has", "stripes"),
                    Phrase("has", "horizontal stripes"), Phrase("is", "a striped {noun}")),
        "dots": (Phrase("is", "polka dotted"), Phrase("has", "polka dots"),
                 Phrase("has", "dots"), Phrase("is", "dotted")),
        "checks": (Phrase("is", "checkered"), Phrase("is", "plaid"),
                   Phrase("has", "a checked pattern"), Phrase("is", "a checked {noun}")),
    },
    "sleeves": {
        "long": (Phrase("has", "long sleeves"), Phrase("is", "long sleeved"),
                 Phrase("is", "long-sleeved")),
        "short": (Phrase("has", "short sleeves"), Phrase("is", "short sleeved"),
                  Phrase("is", "short-sleeved")),
        "sleeveless": (Phrase("is", "sleeveless"), Phrase("has", "no sleeves")),
    },
    "neckline": {
        "round": (Phrase("has", "a round neck"), Phrase("has", "a crew neckline"),
                  Phrase("has", "a round neckline")),
        "v-neck": (Phrase("has", "a v-neck"), Phrase("has", "a v neckline"),
                   Phrase("is", "v-necked"), Phrase("has", "a v shaped neckline")),
        "square": (Phrase("has", "a square neckline"), Phrase("has", "a square neck")),
    },
    "logo": {
        "none": (Phrase("has", "no logo"), Phrase("has", "no graphic"),
                 Phrase("is", "plain without a logo"), Phrase("has", "nothing printed on it")),
        "star": (Phrase("has", "a star graphic"), Phrase("has", "a star logo"),
                 Phrase("has", "a star on the front")),
        "heart": (Phrase("has", "a heart graphic"), Phrase("has", "a heart print"),
                  Phrase("has", "a heart on the front")),
        "letter": (Phrase("has", "the letter a on it"), Phrase("has", "a letter a print"),
                   Phrase("has", "a big letter a")),
    },
}
SLEEVE_ORDER = ("sleeveless", "short", "long")


def specific_phrases(attribute: str, new: str, old: str, noun: str) -> list[Phrase]:
    """Phrases that pin ``attribute`` to ``new`` on their own."""
    if attribute == "color":
        return [Phrase("is", new), Phrase("is", f"{new} colored"), Phrase("is", f"{new} in color"),
                Phrase("is", f"a {new} {noun}"), Phrase("has", f"a {new} color")]
    phrases = [Phrase(p.verb, p.rest.format(noun=noun)) for p in SPECIFIC[attribute][new]]
    # A comparison pins the value when only one option lies in that direction.
    if attribute == "sleeves" and (old, new) == ("short", "long"):
        phrases.append(Phrase("has", "longer sleeves"))
    if attribute == "sleeves" and (old, new) == ("long", "short"):
        phrases.append(Phrase("is", "shorter sleeved"))
    return phrases


def hint_phrases(attribute: str, new: str, old: str) -> list[Phrase]:
    """Comparative phrases that say *how* something changed without naming the result
    ("is darker"); only used alongside a specific phrase in the other caption."""
    if attribute == "color":
        delta = luminance(GARMENT_COLORS[new]) - luminance(GARMENT_COLORS[old])
        if abs(delta) >= 50:
            return [Phrase("is", "darker" if delta < 0 else "lighter")]
        return [Phrase("is", "a different color")]
    if attribute == "pattern":
        return [Phrase("is", "less busy")] if new == "solid" else [Phrase("is", "patterned")]
    if attribute == "sleeves":
        longer = SLEEVE_ORDER.index(new) > SLEEVE_ORDER.index(old)
        return [Phrase("has", "longer sleeves") if longer else Phrase("is", "shorter sleeved")]
    if attribute == "logo":
        return [Phrase("is", "plainer")] if new == "none" else [Phrase("has", "a logo"),
                                                                  Phrase("has", "a graphic")]
    return [Phrase("has", "a different neckline")]


def join_phrases(rng: np.random.Generator, phrases: list[Phrase]) -> str:
    """'is red with long sleeves', 'has a v-neck and is shorter sleeved', ..."""
    text, previous = f"{phrases[0].verb} {phrases[0].rest}", phrases[0].verb
    for phrase in phrases[1:]:
        if phrase.verb == "has":
            # "is red and long sleeves" reads wrong; "has a v-neck and dots" does not.
            joins = (" with ", " and has ", " and ") if previous == "has" else (" with ",
                                                                               " and has ")
            text += pick(rng, joins) + phrase.rest
        elif previous == "has":
            text += " and is " + phrase.rest
        else:
            text += pick(rng, (" and ", " and ", " and is ")) + phrase.rest
        previous = phrase.verb
    return text


def _roughen(rng: np.random.Generator, caption: str) -> str:
    """Annotator habits seen in the real files: a leading 'it', a capital, a trailing
    period or space (the query builder strips '.?, ' anyway)."""
    if rng.random() < 0.04:
        caption = "it " + caption
    if rng.random() < 0.05:
        caption = capitalize_first(caption)
    if rng.random() < 0.06:
        caption += "."
    elif rng.random() < 0.02:
        caption += " "
    return caption


def fashion_captions(rng: np.random.Generator, reference: Design, target: Design,
                     changed: list[str]) -> tuple[str, str]:
    """Two relative captions; each mentions part of the change, together all of it."""
    ref, tgt = FASHION.as_dict(reference), FASHION.as_dict(target)
    noun = pick(rng, NOUNS[tgt["category"]])

    def specific(attribute: str, avoid: Phrase | None = None) -> Phrase:
        options = specific_phrases(attribute, tgt[attribute], ref[attribute], noun)
        return pick(rng, [p for p in options if p != avoid] or options)

    order = shuffled(rng, changed)
    captions: list[list[Phrase]] = [[], []]
    if len(order) == 1:
        captions[0].append(specific(order[0]))
        unchanged = [a for a in FASHION.editable if a not in changed]
        roll = rng.random()
        if roll < 0.45:  # the second annotator says the same thing differently
            captions[1].append(specific(order[0], avoid=captions[0][0]))
        elif roll < 0.7:
            captions[1].append(pick(rng, hint_phrases(order[0], tgt[order[0]], ref[order[0]])))
        else:  # ... or describes something of the target that did not change
            captions[1].append(specific(pick(rng, unchanged)))
    else:
        split = int(rng.integers(1, len(order)))
        for index, attribute in enumerate(order):
            home = 0 if index < split else 1
            captions[home].append(specific(attribute))
            if rng.random() < 0.2:  # sometimes the other caption hints at it too
                captions[1 - home].append(
                    pick(rng, hint_phrases(attribute, tgt[attribute], ref[attribute])))
    texts = [_roughen(rng, join_phrases(rng, shuffled(rng, phrases))) for phrases in captions]
    if rng.random() < 0.5:
        texts.reverse()
    return texts[0], texts[1]


# --- benchmark ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Triplet:
    reference: str
    target: str
    captions: tuple[str, str]
    changed: tuple[str, ...]


@dataclass
class FashionIQData:
    """The generated benchmark in memory; mini-HP-FashionIQ is built from its val split."""

    designs: dict[str, Design] = field(default_factory=dict)
    render_seeds: dict[str, int] = field(default_factory=dict)
    splits: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    triplets: dict[tuple[str, str], list[Triplet]] = field(default_factory=dict)


class _AsinFactory:
    """Unique ASIN-like names: "B0" followed by eight uppercase letters or digits."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.used: set[str] = set()

    def __call__(self) -> str:
        while True:
            chars = self.rng.integers(len(ASIN_ALPHABET), size=8)
            name = "B0" + "".join(ASIN_ALPHABET[int(c)] for c in chars)
            if name not in self.used:
                self.used.add(name)
                return name


class _SplitBuilder:
    """Images and triplets of one category/split."""

    def __init__(self, rng: np.random.Generator, category: str, sizes: FashionIQSizes,
                 new_name: _AsinFactory, data: FashionIQData):
        self.rng, self.category, self.sizes = rng, category, sizes
        self.new_name, self.data = new_name, data
        self.pool: list[str] = []

    def new_image(self, design: Design) -> str:
        name = self.new_name()
        self.data.designs[name] = design
        self.data.render_seeds[name] = int(self.rng.integers(2**62))
        self.pool.append(name)
        return name

    def target_images(self, count: int) -> list[str]:
        """``count`` distinct target images, in groups sharing one design."""
        targets: list[str] = []
        while len(targets) < count:
            design = FASHION.sample(self.rng, category=self.category)
            group = sample_count(self.rng, self.sizes.duplicate_groups, start=1)
            targets += [self.new_image(design) for _ in range(min(group, count - len(targets)))]
        return targets

    def reference_for(self, target: str) -> str:
        """An image 1-3 attribute edits away from ``target``: sometimes one already in the
        split (so references are also targets elsewhere, as in the real data)."""
        designs, target_design = self.data.designs, self.data.designs[target]
        if self.rng.random() < self.sizes.reuse_reference:
            for _ in range(REFERENCE_TRIES):
                candidate = pick(self.rng, self.pool)
                distance = len(FASHION.differences(designs[candidate], target_design))
                if 1 <= distance <= len(EDIT_COUNT_PROBS):
                    return candidate
        edits = FASHION.choose_edits(self.rng, EDIT_COUNT_PROBS, EDIT_WEIGHTS)
        return self.new_image(FASHION.edit(self.rng, target_design, edits))

    def build(self, count: int) -> tuple[list[Triplet], list[str]]:
        triplets = []
        for target in self.target_images(count):
            reference = self.reference_for(target)
            ref_design, tgt_design = self.data.designs[reference], self.data.designs[target]
            changed = FASHION.differences(ref_design, tgt_design)
            captions = fashion_captions(self.rng, ref_design, tgt_design, changed)
            triplets.append(Triplet(reference, target, captions, tuple(changed)))
        n_distractors = round(self.sizes.distractor_ratio * len(self.pool))
        for _ in range(n_distractors):
            self.new_image(FASHION.sample(self.rng, category=self.category))
        return shuffled(self.rng, triplets), shuffled(self.rng, self.pool)


def generate_fashioniq(seed: int, sizes: FashionIQSizes) -> FashionIQData:
    """Designs, splits and triplets of every category and split (no files)."""
    data = FashionIQData()
    new_name = _AsinFactory(substream(seed, NAME, "asin"))
    counts = {"train": sizes.train_triplets, "val": sizes.val_triplets,
              "test": sizes.test_triplets}
    for category in CATEGORIES:
        for split in SPLITS:
            builder = _SplitBuilder(substream(seed, NAME, category, split), category, sizes,
                                    new_name, data)
            triplets, pool = builder.build(counts[split])
            data.triplets[category, split], data.splits[category, split] = triplets, pool
    return data


def _caption_record(triplet: Triplet, split: str) -> dict[str, Any]:
    # Key order as in the official files: target, candidate, captions.
    if split == "test":
        return {"candidate": triplet.reference, "captions": list(triplet.captions)}
    return {"target": triplet.target, "candidate": triplet.reference,
            "captions": list(triplet.captions)}


def build_fashioniq(seed: int, sizes: FashionIQSizes) -> tuple[BenchmarkBuild, FashionIQData]:
    """mini-FashionIQ's files, image jobs and oracle, plus the in-memory data."""
    data = generate_fashioniq(seed, sizes)
    files: list[JsonFile] = []
    queries: dict[str, dict[str, Any]] = {split: {} for split in SPLITS}
    for (category, split), triplets in data.triplets.items():
        files.append(JsonFile(relpath(NAME, "captions", f"cap.{category}.{split}.json"),
                              [_caption_record(t, split) for t in triplets], indent=4))
        files.append(JsonFile(relpath(NAME, "image_splits", f"split.{category}.{split}.json"),
                              data.splits[category, split], indent=4))
        for index, triplet in enumerate(triplets):
            queries[split][f"{category}-{index}"] = {
                "reference": triplet.reference,
                "target": triplet.target,
                "required": FASHION.as_dict(data.designs[triplet.target]),
                "changed": list(triplet.changed),
            }
    images = [ImageJob(relpath(NAME, "images", f"{name}.png"), paint_garment, design,
                       data.render_seeds[name], "png")
              for name, design in data.designs.items()]
    files.append(JsonFile(relpath(NAME, "oracle.json"),
                          oracle_document(NAME, FASHION, data.designs, queries), indent=None))
    counts = {f"{split} triplets": sum(len(data.triplets[c, split]) for c in CATEGORIES)
              for split in SPLITS}
    counts["images"] = len(images)
    return BenchmarkBuild(NAME, files, images, counts), data
