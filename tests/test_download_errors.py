"""retinanet.download_model where no server is needed to say no: nothing listening on the
port, a file of another MD5 already under the model's name, a good one kept. Everything
else (resume, a cut connection, a wrong checksum from the server) is in
test_model_download.py, against a server on loopback."""

import hashlib
import socket
import subprocess

import pytest
from helpers import PYTHON

from retinanet import OFFICIAL_MODELS, PROJECT_ROOT
from retinanet.download_model import DownloadError, download

PTH = "/record/6617981/files/resnext50_32x4d_fpn.pth"


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound, so no one else takes it, but not
    listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_nothing_listening_is_named_and_leaves_no_folder(tmp_path, closed_port):
    target = tmp_path / "models"
    proc = subprocess.run(
        [PYTHON, "-m", "retinanet.download_model", "--dir", str(target), "--base-url", closed_port],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"download_model: error: cannot reach {closed_port}{PTH} (ConnectionError): check the "
        "network, or set ZENODO_URL to a mirror"
    )
    assert not target.exists(), "a failed download left a folder behind"


def test_nothing_listening_keeps_the_part_an_earlier_run_left(tmp_path, closed_port):
    part = tmp_path / "resnext50_32x4d_fpn.pth.part"
    part.write_bytes(b"the first megabyte")
    with pytest.raises(DownloadError, match=r"^cannot reach "):
        download(tmp_path, "pytorch", closed_port, progress=False)
    assert part.read_bytes() == b"the first megabyte", "the next run resumes from it"
    assert sorted(p.name for p in tmp_path.iterdir()) == [part.name]


@pytest.mark.parametrize("fmt", sorted(OFFICIAL_MODELS))
def test_a_file_of_another_md5_is_refused_and_left_as_it_is(tmp_path, closed_port, fmt):
    final = tmp_path / OFFICIAL_MODELS[fmt]["file"]
    final.write_bytes(b"my own model")
    with pytest.raises(DownloadError) as error:
        download(tmp_path, fmt, closed_port, progress=False)
    assert str(error.value) == (
        f"{final} exists but its MD5 is {hashlib.md5(b'my own model').hexdigest()}, not the "
        f"official {OFFICIAL_MODELS[fmt]['md5']}: it is left as it is; move it away, then run "
        "'make model' again"
    )
    assert final.read_bytes() == b"my own model"


def test_a_file_of_the_expected_md5_is_kept_without_asking_the_server(tmp_path, closed_port):
    final = tmp_path / "resnext50_32x4d_fpn.pth"
    final.write_bytes(b"a mirror's model")
    md5 = hashlib.md5(b"a mirror's model").hexdigest()
    stamp = final.stat().st_mtime_ns
    assert download(tmp_path, "pytorch", closed_port, md5=md5, progress=False) == final
    assert final.stat().st_mtime_ns == stamp
