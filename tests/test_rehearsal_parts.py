"""Parts of the offline rehearsal: the loopback mirror (Range, 404, faults), mirrored image
URLs, the synthetic stand-ins (CIRR train captions, URL lists, images, COCO index) and the
LAVIS-format weight files."""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import shutil
import time
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

from qure.data import CIRCO, CIRR
from qure.download.layout import URL_IMAGES_MIRROR, mirror_image_url, parse_asin2url
from qure.errors import DownloadError
from qure.models.blip2_vitl import BertTextTokenizer, Blip2VitLBackbone
from qure.models.lavis_convert import (
    LavisConversionError,
    backbone_from_lavis,
    convert_lavis_state_dicts,
    lavis_blip2_keys,
    load_lavis_state_dict,
)
from qure.rehearsal.mirror import LoopbackMirror
from qure.rehearsal.upstream import (
    COCO_DISTRACTORS,
    FIQ_HOSTS,
    IMAGE_SIZE,
    asin2url_lines,
    cirr_train_captions,
    coco_image_info,
    synthetic_image,
)
from qure.rehearsal.weights import CLIP_BLOCKS, model_config, rehearsal_vocab, write_lavis_files

REL = "dir/sub/file.bin"
DATA = random.Random(7).randbytes(10_000)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / REL).write_bytes(DATA)
    (root / "with space.txt").write_bytes(b"spaced")
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    with LoopbackMirror(root, lifetime=60) as mirror:
        yield mirror


def get(mirror: LoopbackMirror, path: str, headers: dict | None = None):
    """(status, headers, body) for a raw request path (sent as is, no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as err:
            body = err.partial
            response.incomplete = True
        return response.status, response, body
    finally:
        conn.close()


# --- the loopback mirror ------------------------------------------------------------------


def test_serves_a_file_byte_exact(served):
    with urllib.request.urlopen(served.url(REL), timeout=10) as response:
        assert response.status == 200
        assert response.read() == DATA
        assert int(response.headers["Content-Length"]) == len(DATA)
    with urllib.request.urlopen(served.url("with space.txt"), timeout=10) as response:
        assert response.read() == b"spaced"
    assert served.paths() == [REL, "with space.txt"]
    assert served.gets(REL) == [{"path": REL, "range": None}]
    assert served.running and served.base == f"http://127.0.0.1:{served.port}"


def test_range_request_gets_206_and_the_rest_of_the_file(served):
    status, response, body = get(served, "/" + REL, {"Range": "bytes=1234-"})
    assert status == 206
    assert body == DATA[1234:]
    assert response.headers["Content-Range"] == f"bytes 1234-{len(DATA) - 1}/{len(DATA)}"
    assert int(response.headers["Content-Length"]) == len(DATA) - 1234
    status, _, body = get(served, "/" + REL, {"Range": f"bytes={len(DATA) - 1}-"})
    assert (status, body) == (206, DATA[-1:])
    status, response, _ = get(served, "/" + REL, {"Range": f"bytes={len(DATA)}-"})
    assert status == 416 and response.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert served.gets(REL)[0]["range"] == "bytes=1234-"


def test_missing_files_and_escapes_are_404(served, tmp_path):
    (served.root / "link").symlink_to(tmp_path / "secret.txt")
    for path in ("/nope.bin", "/dir/sub", "/dir", "/", "/../secret.txt",
                 "/dir/../../secret.txt", "/%2e%2e/secret.txt", "/link",
                 "/" + str(tmp_path / "secret.txt")):
        status, _, body = get(served, path)
        assert status == 404, path
        assert b"outside the root" not in body
    # A ".." that stays inside the root is fine.
    status, _, body = get(served, "/dir/../" + REL)
    assert (status, body) == (200, DATA)


def test_one_shot_status_faults(served):
    served.faults[REL] = ["500", "404", "500"]
    statuses = [get(served, "/" + REL)[0] for _ in range(4)]
    assert statuses == [500, 404, 500, 200]
    assert served.faults[REL] == []
    # A fault on one path leaves the others alone.
    served.faults[REL] = ["404"]
    assert get(served, "/with%20space.txt")[0] == 200
    assert get(served, "/" + REL)[0] == 404


def test_drop_fault_sends_n_bytes_then_closes(served):
    served.faults[REL] = ["drop:300"]
    with pytest.raises(http.client.IncompleteRead) as err:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        try:
            conn.request("GET", "/" + REL)
            response = conn.getresponse()
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(DATA)
            response.read()
        finally:
            conn.close()
    assert err.value.partial == DATA[:300]
    # With a Range, the N bytes are counted from the range start.
    served.faults[REL] = ["drop:50"]
    status, response, body = get(served, "/" + REL, {"Range": "bytes=1000-"})
    assert status == 206 and body == DATA[1000:1050]
    assert get(served, "/" + REL)[2] == DATA  # one-shot


def test_corrupt_fault_flips_one_byte(served):
    served.faults[REL] = ["corrupt"]
    status, _, body = get(served, "/" + REL)
    assert status == 200 and len(body) == len(DATA)
    diffs = [i for i, (a, b) in enumerate(zip(body, DATA, strict=True)) if a != b]
    assert diffs == [len(DATA) // 2]
    assert body[len(DATA) // 2] == DATA[len(DATA) // 2] ^ 0xFF
    assert get(served, "/" + REL)[2] == DATA


def test_ignore_range_fault_answers_200_with_the_whole_file(served):
    served.faults[REL] = ["ignore-range"]
    status, response, body = get(served, "/" + REL, {"Range": "bytes=500-"})
    assert (status, body) == (200, DATA)
    assert "Content-Range" not in response.headers
    status, _, body = get(served, "/" + REL, {"Range": "bytes=500-"})
    assert (status, body) == (206, DATA[500:])


def test_lifetime_and_root_checks(tmp_path):
    with pytest.raises(FileNotFoundError):
        LoopbackMirror(tmp_path / "missing")
    (tmp_path / "f").write_bytes(b"x")
    mirror = LoopbackMirror(tmp_path, lifetime=0.3).start()
    try:
        assert get(mirror, "/f")[2] == b"x"
        deadline = time.monotonic() + 10
        while mirror.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mirror.running
        with pytest.raises(OSError):
            urllib.request.urlopen(mirror.url("f"), timeout=2)
    finally:
        mirror.stop()
    mirror.stop()  # idempotent


def test_request_log_is_bounded(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with LoopbackMirror(tmp_path, max_log=3) as mirror:
        for _ in range(5):
            get(mirror, "/f")
        assert mirror.paths() == ["f"] * 3


# --- mirrored image URLs ---------------------------------------------------------------------


def test_mirror_image_url_maps_host_and_path():
    url = "http://ecx.images-amazon.com/images/I/41abc+def.jpg?x=1#frag"
    assert mirror_image_url(url, "http://127.0.0.1:9/base/") == (
        "http://127.0.0.1:9/base/fashioniq/url_images/ecx.images-amazon.com/images/I/"
        "41abc%2Bdef.jpg")
    assert mirror_image_url("https://Host.Example:8080/a/b.png", "http://m") == \
        "http://m/fashioniq/url_images/host.example/a/b.png"
    for bad in ("http:///images/a.jpg", "http://host", "http://host/", "not a url", ""):
        with pytest.raises(DownloadError, match="cannot be mirrored"):
            mirror_image_url(bad, "http://m")


def test_mirrored_image_url_is_served(tmp_path):
    url = "http://g-ecx.images-amazon.com/images/I/x y.jpg"
    dest = tmp_path / URL_IMAGES_MIRROR / "g-ecx.images-amazon.com" / "images" / "I" / "x y.jpg"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"jpeg bytes")
    with LoopbackMirror(tmp_path) as mirror:
        with urllib.request.urlopen(mirror_image_url(url, mirror.base), timeout=10) as r:
            assert r.read() == b"jpeg bytes"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(mirror_image_url(url + "x", mirror.base), timeout=10)
        assert err.value.code == 404


# --- synthetic stand-ins -------------------------------------------------------------------


def test_cirr_train_captions_load_with_the_cirr_loader(shared_data, tmp_path):
    root = tmp_path / "cirr_dataset"
    shutil.copytree(shared_data / "cirr" / "image_splits", root / "cirr" / "image_splits")
    split_file = root / "cirr" / "image_splits" / "split.rc2.train.json"
    records = cirr_train_captions(split_file)
    assert records == cirr_train_captions(split_file)
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "captions" / "cap.rc2.train.json").write_text(json.dumps(records))
    split = CIRR(root).load_split("train")
    names = list(json.loads(split_file.read_text()))
    assert len(split) == 3 * (len(names) // 6) == len(records)
    assert split.gallery.names == names
    assert len({q.query_id for q in split}) == len(split)
    for i, query in enumerate(split.queries[:30]):
        members = tuple(names[6 * (i // 3): 6 * (i // 3) + 6])
        assert query.members == members
        assert (query.reference, query.target) == (members[2 * (i % 3)], members[2 * (i % 3) + 1])
        assert query.text
    assert split.has_targets and split.member_indices().shape == (len(split), 6)
    # The real records' fields are present (the other stages read them).
    assert set(records[0]) >= {"pairid", "reference", "target_hard", "target_soft", "caption",
                               "img_set"}


def test_asin2url_lines_round_trip(tmp_path):
    asins = ["B000LUIBH8", "B007RJG5BU", "B00CXSBQ8M"]
    text = asin2url_lines(asins)
    assert text == asin2url_lines(asins) and text.endswith("\n")
    (tmp_path / "asin2url.shirt.txt").write_text(text)
    urls = parse_asin2url(tmp_path / "asin2url.shirt.txt")
    assert list(urls) == asins
    assert len(set(urls.values())) == len(asins)
    for url in urls.values():
        host = url.split("://", 1)[1].split("/", 1)[0]
        assert host in FIQ_HOSTS and url.endswith(".jpg")
        mirror_image_url(url, "http://m")  # mirrorable


def test_synthetic_image_is_deterministic_and_differs_between_names():
    a, b = synthetic_image("B000LUIBH8"), synthetic_image("B000LUIBH8")
    assert a == b
    assert synthetic_image("B007RJG5BU") != a
    image = Image.open(io.BytesIO(a))
    assert image.format == "JPEG" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert image.mode == "RGB"
    png = synthetic_image("B000LUIBH8", "PNG", size=32)
    assert png == synthetic_image("B000LUIBH8", "PNG", size=32)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (32, 32)
    # Different names give different pictures, not only different bytes.
    pixels = {Image.open(io.BytesIO(synthetic_image(f"n{i}", "PNG"))).tobytes()
              for i in range(20)}
    assert len(pixels) == 20


def test_coco_image_info_covers_circo_and_loads(shared_data, tmp_path):
    root = tmp_path / "circo"
    shutil.copytree(shared_data / "circo" / "annotations", root / "annotations")
    records = [json.loads((root / f"annotations/{s}.json").read_text()) for s in ("val", "test")]
    info = coco_image_info(records, seed=0)
    assert info == coco_image_info(records, seed=0)
    assert info != coco_image_info(records, seed=1)
    named = {int(r[k]) for rs in records for r in rs
             for k in ("reference_img_id", "target_img_id") if k in r}
    named |= {int(g) for rs in records for r in rs for g in r.get("gt_img_ids", [])}
    ids = [i["id"] for i in info["images"]]
    assert ids == sorted(set(ids))
    assert named <= set(ids) and len(ids) == len(named) + COCO_DISTRACTORS
    assert all(i["file_name"] == f"{i['id']:012d}.jpg" for i in info["images"])
    index = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps(info))
    circo = CIRCO(root)
    for split in ("val", "test"):
        assert len(circo.load_split(split)) == len(records[("val", "test").index(split)])
    assert circo.load_gallery("val").locate("1") == ()


# --- LAVIS files ------------------------------------------------------------------------------

TEXTS = ["Is Blue colored and a logo, and has short sleeves!", "make it 3x darker",
         "has a higher quality and is taken during the daytime", "shows two people"]
SMALL = {"image_size": 28, "vision_layers": 3, "qformer_layers": 3, "num_query_tokens": 4,
         "max_position_embeddings": 32}


@pytest.fixture
def one_thread():
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rehearsal_vocab_tokenizes_without_unk(one_thread):
    vocab = rehearsal_vocab(TEXTS, words=5)
    assert vocab == rehearsal_vocab(TEXTS, words=5)
    assert vocab[:2] == ["[PAD]", "[unused0]"] and len(set(vocab)) == len(vocab)
    assert not any(t.isupper() for t in vocab if not t.startswith("["))
    tokenizer = BertTextTokenizer(vocab)
    unk = vocab.index("[UNK]")
    for text in [*TEXTS, "zebra-striped 42 unseen words?"]:
        ids = tokenizer.tokenize(text)
        assert unk not in ids, text
    # The most frequent words (of two or more characters), ties alphabetical.
    assert vocab[-5:] == ["and", "has", "is", "blue", "colored"]


@pytest.fixture(scope="module")
def lavis_files(tmp_path_factory):
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("weights")
    vocab = rehearsal_vocab(TEXTS, words=50)
    config = model_config(len(vocab), SMALL)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = write_lavis_files(out, vocab, config, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    return paths, vocab, config


def test_lavis_files_convert(lavis_files, one_thread):
    paths, vocab, config = lavis_files
    assert config.vocab_size == len(vocab) + 1
    assert paths["vocab"].read_text().splitlines() == vocab
    backbone, report = backbone_from_lavis(paths["blip2"], paths["vocab"], paths["vit"], config)
    assert isinstance(backbone, Blip2VitLBackbone)
    assert report.vit_source == str(paths["vit"])
    blip2 = load_lavis_state_dict(paths["blip2"])
    assert not any(k.startswith("visual_encoder.") for k in blip2)  # as LAVIS saves it
    assert set(lavis_blip2_keys(config)) <= set(blip2)
    ignored = " ".join(report.ignored)
    assert f"transformer.resblocks.{CLIP_BLOCKS - 1}." in ignored
    assert f"transformer.resblocks.{config.vision_layers}." in ignored
    assert "itm_head.weight" in ignored and "Qformer.cls.predictions.bias" in ignored
    # The converted weights are the file's.
    state, _ = convert_lavis_state_dicts(blip2, load_lavis_state_dict(paths["vit"]), config)
    assert torch.equal(state["query_tokens"], blip2["query_tokens"].float())
    assert torch.equal(backbone.state_dict()["text_proj.weight"], blip2["text_proj.weight"])


def test_lavis_files_are_deterministic(lavis_files, one_thread, tmp_path):
    paths, vocab, config = lavis_files
    again = write_lavis_files(tmp_path, vocab, config, seed=3)
    other = write_lavis_files(tmp_path / "other", vocab, config, seed=4)
    a, b = load_lavis_state_dict(paths["blip2"]), load_lavis_state_dict(again["blip2"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = load_lavis_state_dict(other["blip2"])
    assert not torch.equal(a["query_tokens"], c["query_tokens"])


def test_removing_a_blip2_key_fails_naming_it(lavis_files, one_thread, tmp_path):
    paths, _, config = lavis_files
    payload = torch.load(paths["blip2"], map_location="cpu", weights_only=True)
    key = "Qformer.bert.encoder.layer.2.crossattention.self.key.weight"
    del payload["model"][key]
    broken = tmp_path / "blip2_pretrained_vitL.pth"
    torch.save(payload, broken)
    with pytest.raises(LavisConversionError, match=rf"{broken}: missing key\(s\): {key}"):
        backbone_from_lavis(broken, paths["vocab"], paths["vit"], config)
    with pytest.raises(LavisConversionError, match=key.replace(".", r"\.")):
        convert_lavis_state_dicts(payload["model"], load_lavis_state_dict(paths["vit"]), config)
    # A ViT file without one block is reported too.
    vit = load_lavis_state_dict(paths["vit"])
    del vit["transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(LavisConversionError, match=r"resblocks\.1\.ln_2\.bias"):
        convert_lavis_state_dicts(load_lavis_state_dict(paths["blip2"]), vit, config,
                                  vit_name="clip_vit_L.pth")
    assert os.path.getsize(paths["blip2"]) > 0
