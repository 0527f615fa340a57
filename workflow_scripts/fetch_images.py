"""Put a dataset's images in the layout the loaders expect; write a JSON report.

FashionIQ: from an archive (--from-archive), a folder (--from-folder) or the per-ASIN URL
lists (--from-urls); CIRCO: download and extract COCO unlabeled2017; CIRR: check the
NLVR2 images (optionally arranging a folder of them, --from-folder).
Exit status: 0 done; 1 images missing under --strict (CIRR: always; report written
first, instructions on stderr); 2 bad input or a failed download.

Example: python workflow_scripts/fetch_images.py --dataset fashioniq \
    --root resources/fashioniq --from-folder ~/Downloads/fashionIQ_dataset \
    --report resources/fashioniq/images.report.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path, PurePosixPath

from qure.cli import reports_errors, setup_logging
from qure.download.archives import extract_archive, marker_path
from qure.download.cli import add_network_args, catalogue, network_options, write_json
from qure.download.fetch import fetch_files
from qure.download.http import sidecar_path
from qure.download.layout import (
    FIQ_CATEGORIES,
    METHODS,
    arrange_cirr_images,
    check_circo_images,
    check_cirr_images,
    cirr_instructions,
    fashioniq_image_report,
    fetch_fashioniq_images,
    import_fashioniq_images,
    link_image_data,
)

log = logging.getLogger("fetch_images")


def _fashioniq(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[dict, bool]:
    root = Path(args.root)
    chosen = [x for x in (args.from_archive, args.from_folder, args.from_urls) if x]
    if len(chosen) != 1:
        parser.error("fashioniq needs exactly one of --from-archive, --from-folder, "
                     "--from-urls")
    if args.images_from_mirror and not (args.from_urls and args.base_url):
        parser.error("--images-from-mirror needs --from-urls and --base-url")
    report: dict = {}
    if args.from_archive:
        report["import"] = import_fashioniq_images(root, args.from_archive)
    elif args.from_folder:
        report["import"] = import_fashioniq_images(root, args.from_folder, method=args.method)
    else:
        if args.url_list_dir:
            lists = {c: Path(args.url_list_dir) / f"asin2url.{c}.txt" for c in FIQ_CATEGORIES}
        else:
            files = catalogue(args, "fashioniq").select(("image_urls",))
            report["url_lists"] = fetch_files(files, root, **network_options(args))
            lists = {c: root / "image_url" / f"asin2url.{c}.txt" for c in FIQ_CATEGORIES}
        report["fetch"] = fetch_fashioniq_images(
            root, lists, workers=args.workers, retries=min(args.retries, 2),
            timeout=min(args.timeout, 30.0), backoff=args.backoff,
            progress=not args.no_progress,
            base_url=args.base_url if args.images_from_mirror else None)
    if args.image_data_links:
        report["image_data_links"] = link_image_data(root)
    report["images"] = fashioniq_image_report(root)
    totals = report["images"]["totals"]
    if totals["missing"]:
        log.warning("%d of %d FashionIQ split images are missing (per split and category in "
                    "the report); the split files were not changed", totals["missing"],
                    totals["unique_images"])
    return report, report["images"]["complete"]


def _cirr(args: argparse.Namespace) -> tuple[dict, bool]:
    report: dict = {}
    if args.from_folder:
        report["arrange"] = arrange_cirr_images(args.root, args.from_folder, method=args.method)
    report["images"] = check_cirr_images(args.root)
    return report, report["images"]["complete"]


def _circo(args: argparse.Namespace) -> tuple[dict, bool]:
    root = Path(args.root)
    files = catalogue(args, "circo").select(("images",), args.only)
    report: dict = {"downloads": [], "extracted": []}
    already = check_circo_images(root)
    if already["complete"]:  # placed by hand or by an earlier run: download nothing
        log.info("COCO unlabeled2017 is already complete under %s", root)
        return {**report, "images": already}, True
    for entry in files:
        target = entry.extract_dir(root)
        if args.download_dir:  # <download-dir>/<archive name>
            entry = replace(entry, path=PurePosixPath(entry.path).name)
        folder = Path(args.download_dir) if args.download_dir else root
        dest = entry.dest(folder)
        if target is not None and marker_path(dest, target).is_file() and not dest.exists():
            log.info("%s was extracted earlier and its archive removed; skipping", dest.name)
            report["extracted"].append({"archive": str(dest), "target": str(target),
                                        "status": "present"})
            continue
        report["downloads"] += fetch_files(
            [entry], folder, skip_unverified_checksums=args.skip_unverified_checksums,
            **network_options(args))
        if target is not None:
            report["extracted"].append(extract_archive(dest, target).as_dict())
            if args.remove_archives:
                dest.unlink()
                sidecar_path(dest).unlink(missing_ok=True)
    report["images"] = check_circo_images(root)
    return report, bool(report["images"]["complete"])


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("fashioniq", "cirr", "circo"))
    parser.add_argument("--root", required=True,
                        help="dataset root (fashioniq/, the cirr_dataset folder, circo/)")
    parser.add_argument("--report", required=True, help="output JSON report")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any image is missing (CIRR always does)")
    fiq = parser.add_argument_group("fashioniq")
    fiq.add_argument("--from-archive", default=None,
                     help="zip/tar(.gz) holding the images (any layout inside)")
    fiq.add_argument("--from-folder", default=None,
                     help="folder holding the images (fashioniq: flat or image_data/<cat>/, "
                          ".jpg or .png; cirr: NLVR2 images in any layout)")
    fiq.add_argument("--from-urls", action="store_true",
                     help="download each image from the asin2url lists (many links are dead)")
    fiq.add_argument("--url-list-dir", default=None,
                     help="with --from-urls: read asin2url.<cat>.txt from this folder instead "
                          "of downloading the lists")
    fiq.add_argument("--images-from-mirror", action="store_true",
                     help="with --from-urls and --base-url: fetch each image from the mirror "
                          "(<base-url>/fashioniq/url_images/<host>/<path> of its listed URL) "
                          "instead of its upstream host")
    fiq.add_argument("--workers", type=int, default=8,
                     help="parallel image downloads with --from-urls (default 8)")
    fiq.add_argument("--method", choices=METHODS, default="copy",
                     help="how --from-folder files are placed (default copy)")
    fiq.add_argument("--image-data-links", action="store_true",
                     help="also create image_data/<cat>/<ASIN>.jpg links for the val images "
                          "(the layout HP-FashionIQ reads)")
    circo = parser.add_argument_group("circo")
    circo.add_argument("--download-dir", default=None,
                       help="folder the zips land in (default: <root>/downloads)")
    circo.add_argument("--only", action="append", default=None, metavar="FILE",
                       help="only this archive (unlabeled2017.zip or "
                            "image_info_unlabeled2017.zip; repeatable)")
    circo.add_argument("--remove-archives", action="store_true",
                       help="delete each zip once it has been extracted")
    circo.add_argument("--skip-unverified-checksums", action="store_true",
                       help="do not check third-party digests (COCO md5s); sizes are still "
                            "checked and sha256 recorded")
    add_network_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    if args.dataset == "fashioniq":
        report, complete = _fashioniq(args, parser)
    elif args.dataset == "cirr":
        report, complete = _cirr(args)
    else:
        report, complete = _circo(args)
    report = {"dataset": args.dataset, "root": str(args.root), "complete": complete,
              "base_url": args.base_url, "sources": args.sources,
              "substitutes": args.substitutes, **report}
    write_json(args.report, report)
    if complete:
        return 0
    if args.dataset == "cirr":
        print(f"error: {cirr_instructions(report['images'])}", file=sys.stderr)
        return 1
    if args.dataset == "circo":
        log.warning("COCO unlabeled2017 is incomplete: %s", report["images"].get(
            "error") or f"{report['images']['missing']} images missing")
    return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
