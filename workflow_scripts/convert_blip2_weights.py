"""Convert LAVIS' BLIP-2 ViT-L weights into a saved blip2_vitl backbone (strict, offline).

Example: python workflow_scripts/convert_blip2_weights.py \
    --blip2 resources/weights/blip2_pretrained_vitL.pth \
    --vit resources/weights/clip_vit_L.pth --vocab resources/weights/bert-base-uncased \
    --out results/models/blip2_vitl.pt --report results/data/blip2_conversion.json

The output is read back with ``qure.models.load_backbone``. Every key of the input files
is either converted or dropped for a listed reason (written to ``--report``); anything
else is an error naming the key and the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qure.cli import reports_errors, setup_logging
from qure.io import atomic_write_json
from qure.models.blip2_vitl import Blip2VitLConfig
from qure.models.interface import save_backbone
from qure.models.lavis_convert import backbone_from_lavis

log = logging.getLogger("convert_blip2_weights")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blip2", required=True,
                        help="LAVIS blip2_pretrained_vitL.pth or a QuRe checkpoint of it")
    parser.add_argument("--vit", default=None,
                        help="LAVIS clip_vit_L.pth (needed unless --blip2 holds "
                             "visual_encoder.* weights)")
    parser.add_argument("--vocab", required=True,
                        help="bert-base-uncased vocab.txt, or a folder holding it")
    parser.add_argument("--out", required=True, help="output backbone file (.pt)")
    parser.add_argument("--report", default=None,
                        help="output JSON: sources, converted count, ignored keys + reasons")
    parser.add_argument("--config", default=None,
                        help="JSON object of Blip2VitLConfig fields to override (sizes, "
                             "text_padding, vit_precision...); default: the paper model")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load files that pickle non-tensor objects (trusted files only)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    overrides = json.loads(args.config) if args.config else {}
    if not isinstance(overrides, dict):
        raise ValueError("--config: expected a JSON object")
    config = Blip2VitLConfig.from_dict(overrides)
    backbone, report = backbone_from_lavis(args.blip2, args.vocab, args.vit, config,
                                           trust_pickle=args.trust_pickle)
    save_backbone(args.out, backbone, extra={"converted_from": report.sources})
    if args.report:
        atomic_write_json(args.report, {
            "sources": report.sources, "vit_source": report.vit_source,
            "converted": report.converted, "source_dtypes": report.source_dtypes,
            "ignored": report.ignored, "parameters": backbone.parameter_counts()})
    log.info("%s", report.summary())
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
