"""Downloads against a loopback HTTP server that serves ../shared/data, with injected faults."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from qure.data import CIRCO, CIRR, FashionIQ, HPFashionIQ
from qure.download import download, load_sources
from qure.download.http import part_path, sidecar_path
from qure.download.sources import parse_sources
from qure.errors import ChecksumError, ConfigError, DownloadError, OfflineError
from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "workflow_scripts"
FAST = {"retries": 3, "backoff": 0.01, "timeout": 5.0, "progress": False}
CAPTION = "fashioniq/captions/cap.dress.train.json"  # 1.2 MB: several chunks


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gives up early (a size mismatch, a test's fault) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Mirror:
    """A ThreadingHTTPServer over ``root`` with Range support and one-shot faults.

    ``faults[path]`` is a list consumed one request at a time: ``"404"``, ``"500"``,
    ``"drop:N"`` (send N bytes, then close), ``"corrupt"`` (flip one byte),
    ``"ignore-range"`` (answer 200 with the whole file even to a Range request).
    """

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[dict] = []
        self.faults: dict[str, list[str]] = {}
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = unquote(urlsplit(self.path).path).lstrip("/")
                mirror.requests.append({"path": path, "range": self.headers.get("Range")})
                queue = mirror.faults.get(path) or []
                fault = queue.pop(0) if queue else None
                if fault in ("404", "500"):
                    self.send_error(int(fault))
                    return
                file = mirror.root / path
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                if fault == "corrupt":
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and fault != "ignore-range":
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start:
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault and fault.startswith("drop:"):
                    self.wfile.write(body[: int(fault.split(":")[1])])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def gets(self, rel: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == rel]

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(shared_data):
    with Mirror(shared_data) as server:
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned(shared_data: Path, rel: str) -> dict:
    file = shared_data / rel
    return {"sha256": sha256_of(file), "size": file.stat().st_size}


# --- the catalogue -------------------------------------------------------------------------

def test_catalogue_matches_sha256sums(shared_data):
    sums = {}
    for line in (shared_data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(None, 1)
        sums[name.strip().removeprefix("./")] = digest
    entries = {f.mirror: f for ds in load_sources().values() for f in ds.files}
    for rel, digest in sums.items():
        entry = entries.get(rel)
        assert entry is not None, f"{rel} is in SHA256SUMS but not in sources.yaml"
        assert entry.sha256 == digest, rel
        assert entry.size == (shared_data / rel).stat().st_size, rel
        assert entry.verified and entry.group == "annotations"
    # Every file we claim to have verified ourselves is one of the shared copies.
    assert {m for m, f in entries.items() if f.verified} == set(sums)


def test_catalogue_covers_every_public_file():
    sources = load_sources()
    fiq = {f.path for f in sources["fashioniq"].files}
    for cat in ("dress", "shirt", "toptee"):
        assert f"image_url/asin2url.{cat}.txt" in fiq
        for split in ("train", "val", "test"):
            assert {f"captions/cap.{cat}.{split}.json",
                    f"image_splits/split.{cat}.{split}.json"} <= fiq
    cirr = {f.path: f for f in sources["cirr"].files}
    assert sources["cirr"].default_root == "cirr_dataset"
    assert cirr["cirr/captions/cap.rc2.train.json"].sha256 is None
    assert all("/cirr_dataset/" in f.url for f in cirr.values())
    coco = {f.path.rsplit("/", 1)[-1]: f for f in sources["circo"].select(("images",))}
    assert coco["unlabeled2017.zip"].size == 20_126_613_414
    assert coco["unlabeled2017.zip"].md5 == "7ebc562819fdb32847aab79530457326"
    assert not coco["unlabeled2017.zip"].verified
    assert {f.extract_to for f in coco.values()} == {"COCO2017_unlabeled"}
    weights = {f.path: f for f in sources["weights"].files}
    assert set(weights) == {"blip2_pretrained_vitL.pth", "clip_vit_L.pth",
                            "bert-base-uncased-vocab.txt"}
    lavis = [f for name, f in weights.items() if name.endswith(".pth")]
    assert all(f.url.startswith("https://storage.googleapis.com/sfr-vision-language-research/"
                                "LAVIS/models/BLIP2/") and f.sha256 is None for f in lavis)
    assert weights["bert-base-uncased-vocab.txt"].url.endswith("bert-base-uncased/resolve/main/"
                                                               "vocab.txt")


def test_catalogue_validation_names_the_entry():
    entry = {"path": "../x.json", "group": "annotations", "url": "https://h/x",
             "mirror": "x.json"}
    with pytest.raises(ConfigError, match=r"files\[0\].*relative path"):
        parse_sources({"version": 1, "datasets": {"d": {"files": [entry]}}}, "s.yaml")
    entry = {**entry, "path": "x.json", "sha256": "abc"}
    with pytest.raises(ConfigError, match="sha256"):
        parse_sources({"version": 1, "datasets": {"d": {"files": [entry]}}}, "s.yaml")


# --- single downloads ----------------------------------------------------------------------

def test_clean_download_verifies(mirror, shared_data, tmp_path):
    dest = tmp_path / "out" / "cap.json"
    result = download(mirror.url(CAPTION), dest, **pinned(shared_data, CAPTION), **FAST)
    assert result.status == "downloaded" and result.resumed_from == 0
    assert dest.read_bytes() == (shared_data / CAPTION).read_bytes()
    assert not part_path(dest).exists() and not sidecar_path(dest).exists()


def test_dropped_connection_resumes_with_range(mirror, shared_data, tmp_path):
    mirror.faults[CAPTION] = ["drop:300000"]
    dest = tmp_path / "cap.json"
    result = download(mirror.url(CAPTION), dest, **pinned(shared_data, CAPTION), **FAST)
    gets = mirror.gets(CAPTION)
    assert [g["range"] for g in gets] == [None, "bytes=300000-"]
    assert result.resumed_from == 300000
    assert sha256_of(dest) == pinned(shared_data, CAPTION)["sha256"]


def test_resume_of_a_part_left_by_an_earlier_run(mirror, shared_data, tmp_path):
    dest = tmp_path / "cap.json"
    data = (shared_data / CAPTION).read_bytes()
    part_path(dest).write_bytes(data[:12345])
    download(mirror.url(CAPTION), dest, **pinned(shared_data, CAPTION), **FAST)
    assert mirror.gets(CAPTION)[0]["range"] == "bytes=12345-"
    assert dest.read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(mirror, shared_data, tmp_path):
    mirror.faults[CAPTION] = ["drop:1000", "ignore-range"]
    dest = tmp_path / "cap.json"
    result = download(mirror.url(CAPTION), dest, **pinned(shared_data, CAPTION), **FAST)
    assert mirror.gets(CAPTION)[1]["range"] == "bytes=1000-"
    assert result.resumed_from == 0
    assert dest.read_bytes() == (shared_data / CAPTION).read_bytes()


def test_corrupted_byte_is_caught_and_nothing_is_left(mirror, shared_data, tmp_path):
    mirror.faults[CAPTION] = ["corrupt"]
    dest = tmp_path / "cap.json"
    expected = pinned(shared_data, CAPTION)
    with pytest.raises(ChecksumError) as err:
        download(mirror.url(CAPTION), dest, **expected, **FAST)
    message = str(err.value)
    assert mirror.url(CAPTION) in message and str(dest) in message
    assert expected["sha256"] in message
    corrupt = bytearray((shared_data / CAPTION).read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    assert hashlib.sha256(corrupt).hexdigest() in message
    assert not dest.exists() and not part_path(dest).exists()
    assert list(tmp_path.iterdir()) == []


def test_md5_is_checked_where_only_md5_is_known(mirror, shared_data, tmp_path):
    data = (shared_data / CAPTION).read_bytes()
    good = hashlib.md5(data).hexdigest()
    result = download(mirror.url(CAPTION), tmp_path / "a.json", md5=good, **FAST)
    assert result.md5 == good and result.pinned
    with pytest.raises(ChecksumError, match="md5"):
        download(mirror.url(CAPTION), tmp_path / "b.json", md5="0" * 32, **FAST)
    assert not (tmp_path / "b.json").exists() and not part_path(tmp_path / "b.json").exists()


def test_wrong_announced_size_stops_before_downloading(mirror, shared_data, tmp_path):
    dest = tmp_path / "cap.json"
    with pytest.raises(ChecksumError, match="size"):
        download(mirror.url(CAPTION), dest, size=999, **FAST)
    assert not dest.exists() and not part_path(dest).exists()


def test_404_is_a_clear_error_and_not_retried(mirror, tmp_path):
    dest = tmp_path / "x.json"
    url = mirror.url("fashioniq/captions/nope.json")
    with pytest.raises(DownloadError, match="404") as err:
        download(url, dest, **FAST)
    assert url in str(err.value) and not isinstance(err.value, OfflineError)
    assert len(mirror.gets("fashioniq/captions/nope.json")) == 1
    assert not dest.exists() and not part_path(dest).exists()


def test_server_errors_are_retried(mirror, shared_data, tmp_path):
    mirror.faults[CAPTION] = ["500", "500"]
    download(mirror.url(CAPTION), tmp_path / "c.json", **pinned(shared_data, CAPTION), **FAST)
    assert len(mirror.gets(CAPTION)) == 3
    mirror.faults[CAPTION] = ["500"] * 5
    with pytest.raises(DownloadError, match=r"giving up after 2 attempts \(HTTP 500"):
        download(mirror.url(CAPTION), tmp_path / "d.json", **{**FAST, "retries": 1})


def test_closed_port_says_the_host_cannot_be_reached(tmp_path):
    dest = tmp_path / "x.json"
    url = f"http://127.0.0.1:{closed_port()}/x.json"
    with pytest.raises(OfflineError) as err:
        download(url, dest, **{**FAST, "retries": 1})
    message = str(err.value)
    assert "could not reach host '127.0.0.1'" in message and "offline" in message
    assert f"place it manually at {dest}" in message
    assert not dest.exists() and not part_path(dest).exists()


def test_unresolvable_host_fails_fast(tmp_path):
    dest = tmp_path / "x.json"
    with pytest.raises(OfflineError, match=r"could not reach host 'qure-test\.invalid'"):
        download("http://qure-test.invalid/x.json", dest, **FAST)
    assert not dest.exists()


def test_download_is_idempotent(mirror, shared_data, tmp_path):
    dest = tmp_path / "cap.json"
    expected = pinned(shared_data, CAPTION)
    download(mirror.url(CAPTION), dest, **expected, **FAST)
    again = download(mirror.url(CAPTION), dest, **expected, **FAST)
    assert again.status == "present" and len(mirror.gets(CAPTION)) == 1
    # A bad file under the final name is reported, not silently replaced.
    dest.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="existing file"):
        download(mirror.url(CAPTION), dest, **expected, **FAST)
    assert dest.read_bytes() == b"tampered" and len(mirror.gets(CAPTION)) == 1


def test_unpinned_file_gets_a_sidecar_and_a_warning(mirror, shared_data, tmp_path, caplog):
    dest = tmp_path / "hpfiq.json"
    rel = "hp_fashioniq/hpfiq.json"
    with caplog.at_level(logging.WARNING, logger="qure.download.http"):
        download(mirror.url(rel), dest, **FAST)
    assert "no pinned checksum" in caplog.text and "recorded" in caplog.text
    record = json.loads(sidecar_path(dest).read_text())
    assert record == {**record, **pinned(shared_data, rel)}
    assert download(mirror.url(rel), dest, **FAST).status == "present"
    dest.write_bytes(dest.read_bytes()[:-1] + b" ")
    with pytest.raises(ChecksumError, match=r"sha256\.json"):
        download(mirror.url(rel), dest, **FAST)


# --- the CLIs ------------------------------------------------------------------------------

def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True,
                          text=True, timeout=120)


def test_fetch_annotations_lays_out_every_dataset_for_the_loaders(mirror, tmp_path):
    roots = {"fashioniq": tmp_path / "fashioniq", "cirr": tmp_path / "cirr_dataset",
             "circo": tmp_path / "circo", "hp_fashioniq": tmp_path / "hp_fashioniq"}
    for dataset, root in roots.items():
        extra = ["--exclude", "cap.rc2.train.json"] if dataset == "cirr" else []
        manifest = tmp_path / f"{dataset}.manifest.json"
        result = run_script("fetch_annotations.py", "--dataset", dataset, "--root", str(root),
                            "--manifest", str(manifest), "--base-url", mirror.base,
                            "--backoff", "0.01", "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
        rows = json.loads(manifest.read_text())["files"]
        assert rows and all(r["status"] == "downloaded" for r in rows)
        assert all(Path(r["dest"]).stat().st_size == r["size"] for r in rows)
    assert len(FashionIQ(roots["fashioniq"]).load_split("val", "dress")) == 2017
    assert len(CIRR(roots["cirr"]).load_split("val")) == 4181
    assert len(CIRCO(roots["circo"]).load_queries("test")) == 800
    assert len(HPFashionIQ(roots["hp_fashioniq"])) == 3050
    # A second run finds everything in place and downloads nothing.
    before = len(mirror.requests)
    result = run_script("fetch_annotations.py", "--dataset", "circo", "--root",
                        str(roots["circo"]), "--manifest", str(tmp_path / "again.json"),
                        "--base-url", mirror.base)
    assert result.returncode == 0 and len(mirror.requests) == before
    rows = json.loads((tmp_path / "again.json").read_text())["files"]
    assert {r["status"] for r in rows} == {"present"}


def test_fetch_annotations_reports_an_offline_machine(tmp_path):
    result = run_script("fetch_annotations.py", "--dataset", "circo", "--root",
                        str(tmp_path / "circo"), "--manifest", str(tmp_path / "m.json"),
                        "--base-url", f"http://127.0.0.1:{closed_port()}", "--retries", "0")
    assert result.returncode == 2
    assert "could not reach host" in result.stderr and "offline" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.json").exists()


def test_fetch_weights_records_unpinned_checksums(tmp_path):
    served = tmp_path / "served" / "weights"
    served.mkdir(parents=True)
    for name in ("blip2_pretrained_vitL.pth", "clip_vit_L.pth", "bert-base-uncased-vocab.txt"):
        (served / name).write_bytes(name.encode() * 1000)
    with Mirror(tmp_path / "served") as server:
        result = run_script("fetch_weights.py", "--out-dir", str(tmp_path / "w"),
                            "--manifest", str(tmp_path / "w.json"), "--base-url", server.base)
    assert result.returncode == 0, result.stderr
    assert "no pinned checksum" in result.stderr
    rows = {Path(r["dest"]).name: r for r in json.loads((tmp_path / "w.json").read_text())
            ["files"]}
    for name, row in rows.items():
        assert row["sha256"] == sha256_of(served / name) and not row["pinned"]
        assert json.loads(sidecar_path(tmp_path / "w" / name).read_text())["sha256"] == \
            row["sha256"]


def test_fetch_images_downloads_and_extracts_coco(tmp_path):
    served = tmp_path / "served"
    zips = served / "coco"
    zips.mkdir(parents=True)
    info = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (1, 2, 3)]}
    build = tmp_path / "build"
    (build / "annotations").mkdir(parents=True)
    (build / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))
    (build / "unlabeled2017").mkdir()
    for i in (1, 2, 3):
        (build / "unlabeled2017" / f"{i:012d}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(i))
    shutil.make_archive(str(zips / "info"), "zip", build, "annotations")
    shutil.make_archive(str(zips / "images"), "zip", build, "unlabeled2017")
    entries = []
    for name, rel in (("image_info_unlabeled2017.zip", "coco/info.zip"),
                      ("unlabeled2017.zip", "coco/images.zip")):
        file = served / rel
        entries.append({"path": f"downloads/{name}", "group": "images",
                        "url": f"http://images.invalid/{name}", "mirror": rel,
                        "size": file.stat().st_size,
                        "md5": hashlib.md5(file.read_bytes()).hexdigest(),
                        "verified": False, "extract_to": "COCO2017_unlabeled"})
    sources = tmp_path / "sources.yaml"
    sources.write_text(json.dumps({"version": 1, "datasets": {"circo": {"files": entries}}}))
    root = tmp_path / "circo"
    with Mirror(served) as server:
        args = ["--dataset", "circo", "--root", str(root), "--report", str(tmp_path / "r.json"),
                "--sources", str(sources), "--base-url", server.base, "--remove-archives"]
        result = run_script("fetch_images.py", *args)
        assert result.returncode == 0, result.stderr
        again = run_script("fetch_images.py", *args)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == 2  # the rerun downloads nothing
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["complete"] and report["images"]["present"] == 3
    assert report["downloads"] == [] and report["extracted"] == []  # already complete
    assert (root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000002.jpg").is_file()
    assert not (root / "downloads" / "unlabeled2017.zip").exists()
