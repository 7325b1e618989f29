"""`make model` / retinanet.download_model against an HTTP server on loopback standing in
for zenodo: success, resume after a cut connection, a wrong checksum refused, a good file
kept, a foreign file never overwritten, and a clean disk after a failure. The official
MD5 cannot be matched by test bytes, so success runs pass the test file's MD5 (--md5)
and the refusal runs use the official one, as make model does."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import make
from loopback import FileServer

from retinanet import OFFICIAL_MODELS as OFFICIAL
from retinanet import PROJECT_ROOT
from retinanet.download_model import cached_md5

PTH = "/record/6617981/files/resnext50_32x4d_fpn.pth"
SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def model_bytes():
    return np.random.default_rng(7).bytes(SIZE)


def md5(data):
    return hashlib.md5(data).hexdigest()


def download(directory, server, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "retinanet.download_model",
            "--dir",
            str(directory),
            "--base-url",
            server.url,
            *args,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow  # a server on loopback
def test_download_checks_md5_and_renames(model_bytes, tmp_path):
    with FileServer({PTH: model_bytes}) as server:
        proc = download(tmp_path / "models", server, "--md5", md5(model_bytes))
    assert proc.returncode == 0, proc.stderr
    final = tmp_path / "models" / "resnext50_32x4d_fpn.pth"
    assert final.read_bytes() == model_bytes
    assert sorted(p.name for p in final.parent.iterdir()) == [
        "resnext50_32x4d_fpn.pth",
        "resnext50_32x4d_fpn.pth.md5.json",
    ]
    assert f"MD5 {md5(model_bytes)} (expected)" in proc.stdout
    assert json.loads((final.parent / "resnext50_32x4d_fpn.pth.md5.json").read_text())[
        "md5"
    ] == md5(model_bytes)


@pytest.mark.slow  # a server on loopback
def test_cut_connection_is_resumed_in_the_same_run(model_bytes, tmp_path):
    with FileServer({PTH: model_bytes}) as server:
        server.cut[PTH] = (1024 * 1024, 1)  # a multiple of the 64 KB read
        proc = download(tmp_path, server, "--md5", md5(model_bytes))
    assert proc.returncode == 0, proc.stderr
    assert "the connection broke after 1.0 of 3.2 MB; resuming" in proc.stderr
    assert server.requests() == [("GET", PTH, None), ("GET", PTH, "bytes=1048576-")]
    assert (tmp_path / "resnext50_32x4d_fpn.pth").read_bytes() == model_bytes


@pytest.mark.slow  # a server on loopback
def test_connection_that_keeps_breaking_leaves_a_part_the_next_run_resumes(model_bytes, tmp_path):
    part = tmp_path / "resnext50_32x4d_fpn.pth.part"
    with FileServer({PTH: model_bytes}) as server:
        server.cut[PTH] = (512 * 1024, 3)
        proc = download(tmp_path, server, "--md5", md5(model_bytes))
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[-1] == (
            f"download_model: error: the connection to {server.url}{PTH} broke 3 times; 1.6 of 3.2 "
            f"MB are kept in {part}: run again to resume"
        )
        assert part.read_bytes() == model_bytes[: 3 * 512 * 1024]
        assert not (tmp_path / "resnext50_32x4d_fpn.pth").exists()

        proc = download(tmp_path, server, "--md5", md5(model_bytes))
        assert proc.returncode == 0, proc.stderr
        assert server.requests()[-1] == ("GET", PTH, f"bytes={3 * 512 * 1024}-")
    assert (tmp_path / "resnext50_32x4d_fpn.pth").read_bytes() == model_bytes and not part.exists()


@pytest.mark.slow  # a server on loopback
def test_wrong_checksum_is_refused_and_the_disk_left_clean(model_bytes, tmp_path):
    target = tmp_path / "models"
    with FileServer({PTH: model_bytes}) as server:
        proc = make("model", f"DIR={target}", f"ZENODO_URL={server.url}", check=False)
    assert proc.returncode != 0
    official = OFFICIAL["pytorch"]["md5"]
    assert (
        f"download_model: error: the 3.2 MB from {server.url}{PTH} have MD5 {md5(model_bytes)}, "
        f"not the official {official}: deleted. Run again; if it happens again the server sends "
        "another file "
        "(check ZENODO_URL)" in proc.stdout
    )
    assert not target.exists(), "a failed download left files behind"


@pytest.mark.slow  # a server on loopback
def test_missing_file_on_the_server_leaves_nothing(tmp_path):
    with FileServer({}) as server:
        proc = make(
            "model",
            f"DIR={tmp_path / 'models'}",
            "FORMAT=onnx",
            f"ZENODO_URL={server.url}",
            check=False,
        )
    assert (
        f"download_model: error: {server.url}/record/6617879/files/resnext50_32x4d_fpn.onnx "
        "answered HTTP 404 "
        "Not Found: check FORMAT and ZENODO_URL" in proc.stdout
    )
    assert not (tmp_path / "models").exists()


@pytest.mark.slow  # a server on loopback
def test_existing_good_file_is_kept_without_a_download(model_bytes, tmp_path):
    final = tmp_path / "resnext50_32x4d_fpn.pth"
    final.write_bytes(model_bytes)
    stamp = final.stat().st_mtime_ns
    with FileServer({PTH: b"other bytes"}) as server:
        proc = download(tmp_path, server, "--md5", md5(model_bytes))
    assert proc.returncode == 0 and "is already there" in proc.stdout and "kept" in proc.stdout
    assert server.log == [] and final.stat().st_mtime_ns == stamp


@pytest.mark.slow  # a server on loopback
def test_existing_other_file_is_refused_and_left_as_it_is(model_bytes, tmp_path):
    final = tmp_path / "resnext50_32x4d_fpn.pth"
    final.write_bytes(b"my own model")
    with FileServer({PTH: model_bytes}) as server:
        proc = make("model", f"DIR={tmp_path}", f"ZENODO_URL={server.url}", check=False)
    assert proc.returncode != 0 and server.log == []
    assert (
        f"download_model: error: {final} exists but its MD5 is {md5(b'my own model')}, not the "
        f"official {OFFICIAL['pytorch']['md5']}: it is left as it is; move it away, then run 'make "
        "model' again" in proc.stdout
    )
    assert final.read_bytes() == b"my own model"


def test_model_md5_is_cached_by_size_and_mtime(tmp_path):
    model = tmp_path / "model.pth"
    model.write_bytes(b"a" * 1000)
    first = cached_md5(model)
    assert first == md5(b"a" * 1000)
    cache = tmp_path / "model.pth.md5.json"
    record = json.loads(cache.read_text())
    cache.write_text(
        json.dumps({**record, "md5": "0" * 32})
    )  # a cache hit returns what the cache says
    assert cached_md5(model) == "0" * 32
    model.write_bytes(b"b" * 1000)  # same size, new mtime: hashed again
    os.utime(model, ns=(record["mtime_ns"] + 10**9, record["mtime_ns"] + 10**9))
    assert cached_md5(model) == md5(b"b" * 1000)
