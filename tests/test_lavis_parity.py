"""Parity of the transformers BLIP-2 ViT-L backbone with LAVIS' own modules.

tools/lavis_parity_env.sh creates (once; reused afterwards) a separate Python 3.11
environment with PyPI salesforce-lavis 1.0.2, outside the repository; in it
tools/lavis_parity_dump.py builds LAVIS' 23-block CLIP ViT and its Q-Former with random
weights, runs QuRe's feature computations and saves weights, inputs and outputs. Here the
weights go through :mod:`qure.models.lavis_convert` into the backbone, which must
reproduce LAVIS' frozen ViT tokens, target embeddings and query embeddings within 1e-4
(fp32), and the tokenizer must reproduce LAVIS' token ids.

Set QURE_SKIP_LAVIS_PARITY=1 to skip; QURE_LAVIS_ENV moves the environment. The tests
are skipped (with the reason) only when the packages cannot be installed: no Python 3.11
or pip failing (e.g. no network); a LAVIS that installs but does not import fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from qure.models.blip2_vitl import BertTextTokenizer, Blip2VitLBackbone, Blip2VitLConfig
from qure.models.lavis_convert import convert_lavis_state_dicts
from tests.conftest import REPO_ROOT

TOOLS = REPO_ROOT / "tools"
TOLERANCE = 1e-4
ENV_TIMEOUT_S = 1800
SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [*",.;!?$()", "is", "red", "and", "has", "long", "sleeve", "##s", "make", "it", "blue",
         "dark", "##er", "with", "stripe", "a", "collar", "photo", "of", "that", "show", "two",
         "dog", "play", "##ing", "the", "shirt", "green"]


@pytest.fixture(scope="module")
def lavis_python() -> str:
    if os.environ.get("QURE_SKIP_LAVIS_PARITY"):
        pytest.skip("QURE_SKIP_LAVIS_PARITY is set")
    result = subprocess.run(["bash", str(TOOLS / "lavis_parity_env.sh")], capture_output=True,
                            text=True, timeout=ENV_TIMEOUT_S, check=False)
    tail = "\n".join(line for line in result.stderr.splitlines()
                     if not line.startswith("WARNING: Location"))[-2000:]
    if result.returncode in (3, 4):  # no Python 3.11 / pip could not install the packages
        pytest.skip(f"the LAVIS parity environment cannot be installed here "
                    f"(lavis_parity_env.sh exit {result.returncode}): {tail}")
    if result.returncode != 0:
        pytest.fail(f"tools/lavis_parity_env.sh failed with exit {result.returncode}:\n{tail}")
    return result.stdout.strip().splitlines()[-1]


def write_vocab(path: Path, size: int | None) -> Path:
    tokens = SPECIALS + WORDS
    if size is not None:
        tokens += [f"[unused{i}]" for i in range(1, size - len(tokens) + 1)]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def lavis_dump(python: str, size: str, tmp_path: Path) -> tuple[dict, Path]:
    vocab = write_vocab(tmp_path / "vocab.txt", 30522 if size == "full" else None)
    out = tmp_path / f"lavis_{size}.pt"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    result = subprocess.run([python, str(TOOLS / "lavis_parity_dump.py"), "--size", size,
                             "--vocab", str(vocab), "--out", str(out), "--threads", "2"],
                            capture_output=True, text=True, env=env, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    dump = torch.load(out, map_location="cpu", weights_only=True)
    out.unlink()  # 1.9 GB at full width; pytest keeps its last temporary folders
    return dump, vocab


def backbone_for(dump: dict, vocab: Path, state: dict | None = None,
                 padding: str = "max_length") -> Blip2VitLBackbone:
    config = Blip2VitLConfig(**dump["size"], vocab_size=dump["vocab_size"],
                             text_padding=padding, vit_precision="fp32")
    converted, report = convert_lavis_state_dicts(state or dump["model"], None, config,
                                                  blip2_name="LAVIS dump")
    assert report.converted == len(converted)
    model = Blip2VitLBackbone(BertTextTokenizer.from_vocab_file(vocab), config)
    model.load_state_dict(converted)
    return model.eval()


def max_diffs(model: Blip2VitLBackbone, dump: dict) -> dict[str, float]:
    with torch.no_grad():
        frozen = model.frozen_features(dump["images"])
        targets = model.encode_images(frozen)
        queries = model.encode_queries(frozen, dump["raw_texts"])
    return {"frozen": (frozen - dump["frozen"]).abs().max().item(),
            "targets": (targets - dump["target_features"]).abs().max().item(),
            "queries": (queries - dump["query_features"]).abs().max().item()}


def check_parity(dump: dict, vocab: Path) -> dict[str, float]:
    tokenizer = BertTextTokenizer.from_vocab_file(vocab)
    ids, mask = tokenizer(dump["raw_texts"], padding="max_length")
    assert torch.equal(ids, dump["input_ids"]) and torch.equal(mask, dump["attention_mask"])
    assert dump["size"]["vision_layers"] == 23
    diffs = max_diffs(backbone_for(dump, vocab), dump)
    print(f"max abs diff vs LAVIS ({dump['size']['vision_width']}-wide ViT): {diffs}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


def test_reduced_width_parity(lavis_python, tmp_path):
    torch.set_num_threads(2)
    dump, vocab = lavis_dump(lavis_python, "reduced", tmp_path)
    check_parity(dump, vocab)
    # Padding to the longest text instead of 32 changes nothing beyond rounding.
    diffs = max_diffs(backbone_for(dump, vocab, padding="longest"), dump)
    assert diffs["queries"] <= TOLERANCE
    # Negative control: the comparison does see a wrong mapping (ln_1/ln_2 swapped in one
    # block, or the text and query feed-forward blocks swapped in one layer).
    for first, second in (("visual_encoder.transformer.resblocks.5.ln_1.weight",
                           "visual_encoder.transformer.resblocks.5.ln_2.weight"),
                          ("Qformer.bert.encoder.layer.1.output.dense.bias",
                           "Qformer.bert.encoder.layer.1.output_query.dense.bias")):
        state = dict(dump["model"])
        state[first], state[second] = state[second], state[first]
        wrong = max_diffs(backbone_for(dump, vocab, state), dump)
        assert max(wrong.values()) > 100 * TOLERANCE, (first, wrong)


@pytest.mark.slow
def test_full_width_parity(lavis_python, tmp_path):
    """The paper sizes: 23-block ViT-L/14 at 224 px, BERT-base Q-Former, 32 queries."""
    torch.set_num_threads(2)
    dump, vocab = lavis_dump(lavis_python, "full", tmp_path)
    assert dump["vocab_size"] == 30523 and dump["size"]["vision_width"] == 1024
    check_parity(dump, vocab)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s"]))
