"""How much score structure QuRe's two-drops rule needs to find hard negatives.

On mini-FashionIQ the relevance oracle knows each training query's graded relevance
to every training target of its category (the share of the query's attributes an image
matches: 1 = false negative, 0.8 = one attribute off, ...). This benchmark scores each
query with that grade plus Gaussian noise of standard deviation ``sigma`` (the target
ranked first, as after training), mines the released two-drops rule and the
``search_depth`` variant, and prints what the sets hold against the baseline of the
warm-up's uniform draw from the whole category:

* mean size and median size of the sets;
* mean graded relevance of their members (random images: the baseline row);
* share of members one or two attributes off (grade 0.6-0.8: the hard negatives QuRe
  is after) and share of false negatives (grade 1).

The noise is in units of the grade: neighbouring grades are 0.2 apart. A trained mini
model's within-grade score spread, measured the same way, is printed by
``--model`` (optional). Ends with one JSON line.

    python benchmarks/two_drops_structure.py [--root DIR] [--sigmas 0 0.02 0.05 0.1 0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from qure.mining import hard_negative_sets
from qure.stages.data import benchmark_oracle, load_splits
from qure.synthetic import synthesize
from qure.training.data import TrainingData

VARIANTS = {"qure (released rule)": {}, "qure, search_depth=20": {"search_depth": 20}}


def grade_matrix(root: Path) -> tuple[TrainingData, torch.Tensor]:
    data = TrainingData.from_splits(load_splits("fashioniq", root, "train"))
    oracle = benchmark_oracle(root)
    if oracle is None:
        raise SystemExit(f"{root}: no oracle.json (not a synthetic benchmark)")
    return data, oracle.graded_relevance("train", data.query_ids, data.corpus)


def member_statistics(size: torch.Tensor, member: torch.Tensor) -> dict[str, float]:
    """Set sizes [Q] and the grades of all set members, summarised."""
    return {"size_mean": size.mean().item(), "size_median": size.median().item(),
            "grade_mean": member.mean().item(),
            "hard_share": ((member >= 0.6) & (member < 1)).float().mean().item(),
            "false_negative_share": (member == 1).float().mean().item()}


def set_statistics(data: TrainingData, grades: torch.Tensor, scores: torch.Tensor,
                   params: dict) -> dict[str, float]:
    sizes, members = [], []
    for group in range(len(data.group_names)):
        rows = (data.query_group == group).nonzero().flatten()
        cols = (data.corpus_group == group).nonzero().flatten()
        local_target = (cols[None, :] == data.target[rows, None]).to(torch.int8).argmax(1)
        sets = hard_negative_sets(scores[rows][:, cols], local_target, "qure", **params)
        owner = torch.repeat_interleave(torch.arange(len(rows)), sets.sizes)
        members.append(grades[rows][:, cols][owner, sets.indices.long()])
        sizes.append(sets.sizes.float())
    return member_statistics(torch.cat(sizes), torch.cat(members))


def random_baseline(data: TrainingData, grades: torch.Tensor) -> dict[str, float]:
    same = data.corpus_group[None, :] == data.query_group[:, None]
    same[torch.arange(len(data)), data.target] = False
    return member_statistics(same.sum(1).float(), grades[same])


def model_spread(model: Path, features: Path, data: TrainingData,
                 grades: torch.Tensor) -> dict[str, float]:
    """Within-query score spread per grade of a trained backbone, in grade units."""
    from qure.evaluation import encode_gallery, encode_queries
    from qure.models.feature_cache import FeatureCache
    from qure.models.interface import load_backbone
    from qure.stages.models import features_by_name

    backbone, _ = load_backbone(model)
    backbone.eval()
    cache = FeatureCache.open_for(features, backbone, FeatureCache.recorded_preprocess(features))
    table = features_by_name(cache)
    with torch.no_grad():
        scores = backbone.score(encode_queries(backbone, table, data.references, data.texts),
                                encode_gallery(backbone, table, data.corpus)).float()
    same = data.corpus_group[None, :] == data.query_group[:, None]
    means, spreads = {}, []
    for level in (0.0, 0.2, 0.4, 0.6, 0.8):
        mask = same & (grades == level)
        count = mask.sum(1)
        ok = count > 1
        mean = torch.where(mask, scores, 0).sum(1) / count.clamp(min=1)
        var = torch.where(mask, (scores - mean[:, None]) ** 2, 0).sum(1) / count.clamp(min=1)
        means[level] = mean[ok].mean().item()
        spreads.append(var[ok].sqrt().mean().item())
    # Score units per grade unit: the slope of mean score over grade 0 .. 0.8.
    slope = (means[0.8] - means[0.0]) / 0.8
    return {"score_per_grade": slope, "within_grade_sd": sum(spreads) / len(spreads),
            "sigma_equivalent": sum(spreads) / len(spreads) / slope}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None,
                        help="a synthetic mini-FashionIQ (default: generate one, seed 0)")
    parser.add_argument("--sigmas", type=float, nargs="+",
                        default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="trained backbone (model.pt)")
    parser.add_argument("--features", default=None, help="its feature cache (.npy)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "fashioniq"
        if args.root is None:
            synthesize(tmp, seed=0, scale="default", benchmarks=["fashioniq"], workers=2)
        data, grades = grade_matrix(root)
    rows = [("random (warm-up draw)", None, random_baseline(data, grades))]
    generator = torch.Generator().manual_seed(args.seed)
    for sigma in args.sigmas:
        scores = grades + sigma * torch.randn(grades.shape, generator=generator)
        scores[torch.arange(len(data)), data.target] = 2.0  # target ranked first
        for name, params in VARIANTS.items():
            rows.append((name, sigma, set_statistics(data, grades, scores, params)))
    print(f"mini-FashionIQ train: {len(data)} queries, {data.num_columns} targets "
          f"in {len(data.group_names)} categories; noise sigma in grade units (grades 0.2 apart)")
    print(f"{'sets':<24}{'sigma':>6}{'size mean':>11}{'median':>8}{'grade':>7}"
          f"{'hard':>7}{'false neg':>10}")
    for name, sigma, stats in rows:
        print(f"{name:<24}{'-' if sigma is None else sigma:>6}{stats['size_mean']:>11.1f}"
              f"{stats['size_median']:>8.0f}{stats['grade_mean']:>7.3f}"
              f"{stats['hard_share']:>7.3f}{stats['false_negative_share']:>10.4f}")
    result = {"benchmark": "two_drops_structure", "queries": len(data),
              "rows": [{"sets": n, "sigma": s, **st} for n, s, st in rows]}
    if args.model:
        if not args.features:
            parser.error("--model needs --features")
        spread = model_spread(Path(args.model), Path(args.features), data, grades)
        print(f"trained model: {spread['score_per_grade']:.3f} score per grade unit, "
              f"within-grade sd {spread['within_grade_sd']:.3f} "
              f"= sigma {spread['sigma_equivalent']:.2f} in grade units")
        result["model"] = spread
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
