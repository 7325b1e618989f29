"""Download the official RetinaNet model from zenodo, resuming and checking its MD5.

    python -m retinanet.download_model --dir DIR [--format pytorch|onnx]

The bytes go to DIR/<file>.part, continued with an HTTP Range request after a broken
connection (here, up to ATTEMPTS times, or by running again); the file takes its final
name only once its MD5 is the official one. A good file already there is kept and not
downloaded again; any other file under that name is refused, never overwritten. A file
whose MD5 is wrong is deleted, so a failed download leaves nothing behind but the .part
of a broken connection, which the next run continues.

pooch and the like verify a hash but start over after a broken connection: for 150 MB
over a slow link, resuming is the point, hence requests and a few lines here.
"""

import argparse
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import requests
import tqdm

from retinanet import OFFICIAL_MODELS
from retinanet.files import file_digest

ZENODO = "https://zenodo.org"
ATTEMPTS = 3
RETRY_PAUSE_S = 1
HTTP_TIMEOUT = (30, 120)  # connect, between two reads
CHUNK = 1 << 16
CACHE_SUFFIX = ".md5.json"


class DownloadError(Exception):
    pass


def cached_md5(path):
    """The file's MD5, from a small cache file beside it while its size and mtime are
    unchanged: hashing 150 MB before every run is not needed."""
    path = Path(path)
    stat = path.stat()
    key = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache = path.with_name(path.name + CACHE_SUFFIX)
    try:
        record = json.loads(cache.read_text())
        if {k: record.get(k) for k in key} == key and len(record.get("md5", "")) == 32:
            return record["md5"]
    except (OSError, ValueError):
        pass
    md5 = file_digest(path)
    try:
        cache.write_text(json.dumps({"file": path.name, **key, "md5": md5}) + "\n")
    except OSError:
        pass  # a read-only model folder: hash again next time
    return md5


def official_format(md5):
    """'pytorch' or 'onnx' if md5 is an official file's, else None."""
    return next((name for name, spec in OFFICIAL_MODELS.items() if spec["md5"] == md5), None)


def model_url(base, spec):
    return f"{base.rstrip('/')}/record/{spec['record']}/files/{spec['file']}"


def digest_of(part):
    """The MD5 of what part holds so far, to continue it."""
    digest = hashlib.md5()
    if part.exists():
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    return digest


def request(url, done):
    """The response for url from byte done on."""
    # identity: Range and Content-Length then count the bytes on disk
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={done}-"} if done else {})}
    return requests.get(url, stream=True, timeout=HTTP_TIMEOUT, headers=headers)


def check_space(part, done, total):
    if total is None:
        return
    free = shutil.disk_usage(part.parent).free
    if total - done > free:
        raise DownloadError(
            f"{part.parent} has {free / 1e6:.0f} MB free, the model needs "
            f"{(total - done) / 1e6:.0f} MB more: free some space and run again"
        )


def receive(response, part, resumed, digest, done, total, progress):
    """The response's bytes onto part; a broken connection leaves part with what came."""
    bar = tqdm.tqdm(
        total=total,
        initial=done,
        unit="B",
        unit_scale=True,
        desc=part.name[: -len(".part")],
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    try:
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in response.iter_content(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except requests.exceptions.RequestException:
        pass  # a broken connection: part holds what came, the caller's size check resumes it
    finally:
        bar.close()


def fetch(url, part, md5, progress=True):
    """Download url into part, continuing what part holds; return the MD5 of the whole."""
    attempt = 0
    while True:
        attempt += 1
        done = part.stat().st_size if part.exists() else 0
        digest = digest_of(part) if done else hashlib.md5()
        try:
            response = request(url, done)
        except requests.exceptions.RequestException as error:
            if attempt < ATTEMPTS:
                time.sleep(RETRY_PAUSE_S)
                continue
            raise DownloadError(
                f"cannot reach {url} ({type(error).__name__}): check the network, or set "
                "ZENODO_URL to a mirror"
            ) from None
        if response.status_code == 416 and done:
            # the server has no byte after what part holds: it is whole, or from another file
            return digest.hexdigest()
        if not response.ok:
            raise DownloadError(
                f"{url} answered HTTP {response.status_code} {response.reason}: check FORMAT "
                "and ZENODO_URL"
            )
        content_range = response.headers.get("Content-Range", "")
        resumed = response.status_code == 206 and content_range.startswith(f"bytes {done}-")
        if not resumed:  # the whole file is coming
            done, digest = 0, hashlib.md5()
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        check_space(part, done, total)
        receive(response, part, resumed, digest, done, total, progress)
        size = part.stat().st_size
        if total is None or size == total:
            return digest.hexdigest()
        if attempt >= ATTEMPTS:
            raise DownloadError(
                f"the connection to {url} broke {attempt} times; {size / 1e6:.1f} of "
                f"{total / 1e6:.1f} MB are kept in {part}: run again to resume"
            )
        print(
            f"download_model: the connection broke after {size / 1e6:.1f} of {total / 1e6:.1f} "
            "MB; resuming",
            file=sys.stderr,
        )
        time.sleep(RETRY_PAUSE_S)


def download(directory, fmt="pytorch", base=ZENODO, md5=None, progress=True):
    """Put the official file of format fmt in directory; return its path."""
    spec = OFFICIAL_MODELS[fmt]
    md5 = md5 or spec["md5"]
    which = "official" if md5 == spec["md5"] else "expected"
    directory = Path(directory)
    final = directory / spec["file"]
    if final.exists():
        have = cached_md5(final)
        if have != md5:
            raise DownloadError(
                f"{final} exists but its MD5 is {have}, not the {which} {md5}: it is left as it "
                "is; move it away, then run 'make model' again"
            )
        print(f"download_model: {final} is already there, MD5 {md5} ({which}): kept")
        return final
    url = model_url(base, spec)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / (spec["file"] + ".part")
    try:
        got = fetch(url, part, md5, progress)
    except KeyboardInterrupt:
        print(
            f"download_model: interrupted; {part} holds what came: run again to resume",
            file=sys.stderr,
        )
        raise
    except DownloadError:
        clean(part, created, keep_part=True)
        raise
    except OSError as error:
        clean(part, created, keep_part=error.errno != errno.ENOSPC)
        if error.errno == errno.ENOSPC:
            raise DownloadError(
                f"the disk holding {directory} is full: free about 200 MB and run again"
            ) from None
        raise
    if got != md5:
        size = part.stat().st_size
        part.unlink()
        clean(part, created, keep_part=False)
        raise DownloadError(
            f"the {size / 1e6:.1f} MB from {url} have MD5 {got}, not the {which} {md5}: "
            "deleted. Run again; if it happens again the server sends another file (check "
            "ZENODO_URL)"
        )
    part.replace(final)
    cached_md5(final)  # remember it, so the first run does not hash it again
    print(f"download_model: {final}: {final.stat().st_size / 1e6:.1f} MB, MD5 {md5} ({which})")
    return final


def clean(part, created, keep_part):
    """Leave the disk as it was, but for a .part worth resuming."""
    if part.exists() and (not keep_part or part.stat().st_size == 0):
        part.unlink()
    if created and not any(part.parent.iterdir()):
        part.parent.rmdir()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", required=True, help="folder to put the model in")
    parser.add_argument("--format", choices=sorted(OFFICIAL_MODELS), default="pytorch")
    parser.add_argument(
        "--base-url",
        help="zenodo or a mirror with its /record/<id>/files/<file> paths "
        f"(default: $ZENODO_URL, else {ZENODO})",
    )
    parser.add_argument("--md5", help="expected MD5 (default: the official file's)")
    args = parser.parse_args()
    try:
        download(
            args.dir, args.format, args.base_url or os.environ.get("ZENODO_URL") or ZENODO, args.md5
        )
    except DownloadError as error:
        sys.exit(f"download_model: error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
