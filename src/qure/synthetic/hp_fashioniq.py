"""mini-HP-FashionIQ: simulated human preferences between two retrievers' top-5 sets,
built on mini-FashionIQ's shirt and toptee val triplets (research/datasets.md §4).

``hpfiq.json`` has the release's exact structure; images are JPEG copies (re-renders of
the same design and nuisance seed) at ``image_data/<cat>/<ASIN>.jpg`` beside it. Two
retrievers rank the category's val images by oracle relevance plus Gaussian noise at a
low and a high level. Annotators rate each set from its mean graded relevance (plus their
own leniency and noise) and then make a forced choice that mostly follows their ratings,
breaking ties with a position bias, so the better retriever wins often but not always.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from qure.synthetic.common import (
    BenchmarkBuild,
    Design,
    ImageJob,
    JsonFile,
    relpath,
    shuffled,
    substream,
)
from qure.synthetic.fashioniq import FashionIQData, Triplet
from qure.synthetic.garments import FASHION, paint_garment
from qure.synthetic.sizes import HPSizes
from qure.synthetic.world import encode_designs, oracle_document

NAME = "hp_fashioniq"
CATEGORIES = ("shirt", "toptee")  # the release has no dresses
QUESTION_SETS = 2
SET_SIZE = 5
# (name, noise std) of the two simulated retrievers; relevance is in [0, 1].
RETRIEVERS = (("oracle+low-noise", 0.15), ("oracle+high-noise", 0.6))
RATING_NOISE = 0.5
CONSISTENCY = 0.97  # P(the forced choice agrees with the ratings when they differ)
VAL_REPLACEMENTS = {".": "dotmark", "?": "questionmark", "&": "andmark", "*": "starmark"}


def val_caption(caption: str) -> str:
    """CoSMo/VAL ``caption_post_process``: strip, then spell out . ? & *."""
    text = caption.strip()
    for char, word in VAL_REPLACEMENTS.items():
        text = text.replace(char, word)
    return text


def val_sentence(rng: np.random.Generator, captions: tuple[str, str]) -> str:
    """'capA  and capB': VAL's caption lines end with a space, hence the double space."""
    first, second = captions if rng.random() < 0.5 else captions[::-1]
    return f"{val_caption(first)}  and {val_caption(second)}"


def image_path(category: str, asin: str) -> str:
    return f"/-/image_data/{category}/{asin}.jpg"


def graded_relevance(codes: np.ndarray, target_code: np.ndarray) -> np.ndarray:
    """Fraction of the target's editable attributes each image matches (categories agree)."""
    editable = [FASHION.position(a) for a in FASHION.editable]
    return (codes[:, editable] == target_code[editable]).mean(axis=1)


@dataclass(frozen=True)
class _Annotator:
    leniency: float  # added to every rating
    first_set_bias: float  # pull towards set 1 when the ratings tie


def _rate(rng: np.random.Generator, quality: float, annotator: _Annotator) -> tuple[int, float]:
    latent = 1 + 4 * quality + annotator.leniency + rng.normal(0, RATING_NOISE)
    return int(np.clip(round(latent), 1, 5)), latent


def _choose(rng: np.random.Generator, ratings: tuple[int, int], latents: tuple[float, float],
            annotator: _Annotator) -> int:
    if ratings[0] != ratings[1]:
        higher = 1 if ratings[0] > ratings[1] else 2
        return higher if rng.random() < CONSISTENCY else 3 - higher
    margin = latents[0] - latents[1] + annotator.first_set_bias + rng.normal(0, 0.3)
    return 1 if margin > 0 else 2


class _Comparisons:
    """Draws val triplets of a category without repetition (reshuffling when exhausted)."""

    def __init__(self, rng: np.random.Generator, triplets: list[Triplet]):
        self.rng, self.triplets = rng, triplets
        self._order: Iterator[int] = iter(())

    def next(self) -> Triplet:
        index = next(self._order, None)
        if index is None:
            self._order = iter(shuffled(self.rng, range(len(self.triplets))))
            index = next(self._order)
        return self.triplets[index]


def build_hp_fashioniq(seed: int, sizes: HPSizes, fiq: FashionIQData) -> BenchmarkBuild:
    """mini-HP-FashionIQ's hpfiq.json, JPEG image jobs and oracle."""
    rng = substream(seed, NAME)
    n_shirt = int(np.clip(round(sizes.users * sizes.shirt_user_share), min(1, sizes.users),
                          max(sizes.users - 1, 1)))
    user_categories = shuffled(rng, ["shirt"] * n_shirt + ["toptee"] * (sizes.users - n_shirt))
    galleries = {c: fiq.splits[c, "val"] for c in CATEGORIES}
    codes = {c: encode_designs(FASHION, [fiq.designs[n] for n in galleries[c]])
             for c in CATEGORIES}
    positions = {c: {n: i for i, n in enumerate(galleries[c])} for c in CATEGORIES}
    draws = {c: _Comparisons(rng, fiq.triplets[c, "val"]) for c in CATEGORIES}

    document: dict[str, Any] = {}
    truths: dict[str, Any] = {}
    shown: dict[tuple[str, str], None] = {}
    for user_number, category in enumerate(user_categories, start=1):
        user = f"user_{user_number}"
        annotator = _Annotator(float(rng.normal(0, 0.4)), float(rng.normal(0.15, 0.1)))
        document[user] = {}
        for set_number in range(1, QUESTION_SETS + 1):
            qset = f"question_set_{set_number}"
            block: dict[str, list[Any]] = {k: [] for k in (
                "ref_img_paths", "targ_img_paths", "sentences", "retrieved_set1",
                "retrieved_set2", "preferred set")}
            for index in range(sizes.comparisons_per_set):
                triplet = draws[category].next()
                target_code = codes[category][positions[category][triplet.target]]
                relevance = graded_relevance(codes[category], target_code)
                reference = positions[category][triplet.reference]
                retrieved = []
                for _, noise in RETRIEVERS:
                    scores = relevance + rng.normal(0, noise, size=len(relevance))
                    scores[reference] = -np.inf  # a retrieved image is never the reference
                    retrieved.append(np.argsort(-scores, kind="stable")[:SET_SIZE])
                order = [0, 1] if rng.random() < 0.5 else [1, 0]
                quality = [float(relevance[retrieved[k]].mean()) for k in order]
                (r1, l1), (r2, l2) = (_rate(rng, q, annotator) for q in quality)
                preferred = _choose(rng, (r1, r2), (l1, l2), annotator)
                sets = [[galleries[category][i] for i in retrieved[k]] for k in order]

                block["ref_img_paths"].append(image_path(category, triplet.reference))
                block["targ_img_paths"].append(image_path(category, triplet.target))
                block["sentences"].append(val_sentence(rng, triplet.captions))
                for key, names, rating in (("retrieved_set1", sets[0], r1),
                                           ("retrieved_set2", sets[1], r2)):
                    block[key].append({"img_path": [image_path(category, n) for n in names],
                                       "user_score": str(rating)})
                block["preferred set"].append(str(preferred))
                truths[f"{user}/{qset}[{index}]"] = {
                    "reference": triplet.reference, "target": triplet.target,
                    "required": FASHION.as_dict(fiq.designs[triplet.target]),
                    "changed": list(triplet.changed), "category": category,
                    "retrievers": [RETRIEVERS[k][0] for k in order],
                    "set_relevance": [round(q, 4) for q in quality],
                    "better_set": order.index(0) + 1,
                }
                for name in (triplet.reference, triplet.target, *sets[0], *sets[1]):
                    shown.setdefault((category, name), None)
            document[user][qset] = block

    images = [ImageJob(relpath(NAME, "image_data", category, f"{name}.jpg"), paint_garment,
                       fiq.designs[name], fiq.render_seeds[name], "jpeg")
              for category, name in shown]
    oracle_images: dict[str, Design] = {n: fiq.designs[n] for c in CATEGORIES
                                        for n in galleries[c]}
    files = [JsonFile(relpath(NAME, "hpfiq.json"), document, indent=2),
             JsonFile(relpath(NAME, "oracle.json"),
                      oracle_document(NAME, FASHION, oracle_images, {"comparisons": truths}),
                      indent=None)]
    better = [t["better_set"] == int(p) for t, p in zip(
        truths.values(), (p for u in document.values() for b in u.values()
                          for p in b["preferred set"]), strict=True)]
    counts = {"users": sizes.users, "comparisons": len(truths), "images": len(images),
              "better retriever preferred": round(float(np.mean(better)), 3) if better else 0.0}
    return BenchmarkBuild(NAME, files, images, counts)
