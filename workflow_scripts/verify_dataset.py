"""Check a dataset on disk: annotation checksums, loaders, image layout; write a JSON report.

Exit status: 0 (report written; problems are listed in it), 1 with --strict when anything
is wrong (the fix is printed on stderr), 2 on bad input.

Example: python workflow_scripts/verify_dataset.py --dataset fashioniq \
    --root resources/fashioniq --out results/data/fashioniq.verify.json --strict
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from qure.cli import reports_errors, setup_logging
from qure.data import HPFashionIQ
from qure.data.stats import dataset_stats, has_problems
from qure.data.subset import MANIFEST
from qure.download.cli import write_json
from qure.download.fetch import verify_files
from qure.download.http import file_digests
from qure.download.layout import (
    check_circo_images,
    check_cirr_images,
    cirr_instructions,
    fashioniq_image_report,
)
from qure.download.sources import dataset_sources
from qure.errors import QureError
from qure.io import read_json

log = logging.getLogger("verify_dataset")
DATASETS = ("fashioniq", "cirr", "circo", "hp_fashioniq")


def _images(dataset: str, root: str, image_root: str | None) -> tuple[dict, str | None]:
    """The layout report and, if images are missing, what to do about it."""
    if dataset == "fashioniq":
        report = fashioniq_image_report(root)
        fix = (f"{report['totals']['missing']} FashionIQ images are missing (listed per split "
               "and category in the report). Run workflow_scripts/fetch_images.py --dataset "
               f"fashioniq --root {root} with --from-archive/--from-folder (a mirror copy) or "
               "--from-urls; many upstream URLs are dead, so some images may stay missing. "
               "The split files are never edited.")
    elif dataset == "cirr":
        report = check_cirr_images(root)
        fix = cirr_instructions(report)
    elif dataset == "circo":
        report = check_circo_images(root)
        fix = (f"COCO unlabeled2017 is incomplete under {root}/COCO2017_unlabeled "
               f"({report.get('error') or str(report['missing']) + ' images missing'}). Run "
               f"workflow_scripts/fetch_images.py --dataset circo --root {root}, or download "
               "http://images.cocodataset.org/zips/unlabeled2017.zip and "
               "http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip by "
               f"hand and unzip both into {root}/COCO2017_unlabeled.")
    else:
        hp = HPFashionIQ(root, image_root)
        missing = hp.missing_images()
        report = {"images": len(hp.images()), "missing": len(missing),
                  "missing_examples": [f"{c}/{a}" for c, a in missing[:20]],
                  "image_root": str(hp.image_root), "complete": not missing}
        fix = (f"{len(missing)} HP-FashionIQ images are missing under {hp.image_root}/"
               "image_data/<cat>/<ASIN>.jpg. Put the FashionIQ images in place, then run "
               "workflow_scripts/fetch_images.py --dataset fashioniq --root <fashioniq root> "
               "... --image-data-links, and pass --image-root <fashioniq root>.")
    return report, None if report.get("complete") else fix


def _subset_check(root: str, full_root: str) -> dict | None:
    """For a subset root (data.subset): its manifest, and the source files that changed."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path, dict)
    stale = [rel for rel, digest in manifest.get("source_files", {}).items()
             if not (Path(full_root) / rel).is_file()
             or file_digests(Path(full_root) / rel)[0] != digest]
    return {"manifest": str(path), "queries": manifest.get("queries"),
            "gallery": manifest.get("gallery"), "stale": stale}


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True,
                        help="dataset root (for CIRR the cirr_dataset folder)")
    parser.add_argument("--image-root", default=None,
                        help="hp_fashioniq only: folder holding image_data/<cat>/<ASIN>.jpg "
                             "(default: --root)")
    parser.add_argument("--out", required=True, help="output JSON report")
    parser.add_argument("--sources", default=None,
                        help="catalogue YAML instead of the packaged sources.yaml")
    parser.add_argument("--substitutes", default=None, metavar="YAML",
                        help="the mirror files that are not the upstream bytes (as given to "
                             "the fetch scripts); their substitute pins are checked")
    parser.add_argument("--annotations-root", default=None,
                        help="where the catalogue's annotation files are checked (default "
                             "--root); for a subset root (data.subset), the full root it was "
                             "cut from")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 (with instructions) if anything is missing or wrong")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.image_root is not None and args.dataset != "hp_fashioniq":
        parser.error("--image-root applies to hp_fashioniq only")

    problems: list[str] = []
    fixes: list[str] = []
    files = dataset_sources(args.dataset, args.sources, args.substitutes).select(
        ("annotations",))
    annotations_root = args.annotations_root or args.root
    annotations = verify_files(files, annotations_root)
    for row in annotations:
        if row["status"] in ("missing", "mismatch"):
            problems.append(f"annotation {row['dest']}: {row['status']}")
    if any(row["status"] in ("missing", "mismatch") for row in annotations):
        fixes.append(f"Run workflow_scripts/fetch_annotations.py --dataset {args.dataset} "
                     f"--root {annotations_root} --manifest <file> (delete a mismatching "
                     "file first).")
    subset = _subset_check(args.root, annotations_root)
    if subset is not None and subset["stale"]:
        problems.append(f"the subset at {args.root} was cut from other annotation files than "
                        f"those now under {annotations_root}: {', '.join(subset['stale'])}")
        fixes.append(f"Delete {Path(args.root) / MANIFEST} and rerun the workflow (the subset "
                     "rule writes it again).")
    options: dict[str, Any] = {}
    if args.image_root is not None:
        options["image_root"] = args.image_root
    try:
        stats = dataset_stats(args.dataset, args.root, **options)
    except QureError as err:
        stats = {"error": str(err)}
    if has_problems(stats):
        problems.append("the loaders report errors or missing images (see 'stats')")
    try:
        images, fix = _images(args.dataset, args.root, args.image_root)
    except QureError as err:
        images, fix = {"error": str(err), "complete": False}, str(err)
    if fix:
        problems.append("images missing (see 'images')")
        fixes.append(fix)
    report = {"dataset": args.dataset, "root": str(args.root),
              "annotations_root": str(annotations_root), "substitutes": args.substitutes,
              "subset": subset,
              "ok": not problems,
              "problems": problems, "fix": fixes, "annotations": annotations,
              "stats": stats, "images": images}
    write_json(args.out, report)
    for problem in problems:
        log.warning("%s", problem)
    if problems and args.strict:
        print("error: " + "\n".join(fixes or problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
