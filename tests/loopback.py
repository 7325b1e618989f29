"""Servers on 127.0.0.1 that stand in for the remote ones, started and stopped by the tests.

- FileServer: HTTP/1.1 with Range requests, as storage.googleapis.com and zenodo.org serve
  files; it can cut a response short (a broken connection), send it slowly (time to kill
  the client mid-way) and logs every request.
- S3Server: moto's S3-compatible server, the stand-in for the public open-images-dataset
  bucket (objects public-read, fetched unsigned as the downloader does).
- SlowProxy: an HTTP proxy in front of another server that sends each body in two halves
  with a pause between them, and logs the requests.
"""

import http.client
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3

LOOPBACK = "127.0.0.1"


class _Server:
    handler = None

    def __init__(self):
        self.log = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), self.handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self):
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}"

    def requests(self, method="GET"):
        with self.lock:
            return [entry for entry in self.log if entry[0] == method]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, no request log on stderr, HEAD answered like GET without a body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET(body=False)


class _FileHandler(_QuietHandler):
    def do_GET(self, body=True):
        server = self.server.owner
        path = urlsplit(self.path).path
        with server.lock:
            server.log.append((self.command, path, self.headers.get("Range")))
            cut = server.cut.get(path)
            if cut and cut[1] > 0:
                server.cut[path] = (cut[0], cut[1] - 1)
            else:
                cut = None
        data = server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        if cut:  # send the first cut[0] bytes of this response, then drop the connection
            payload = payload[: cut[0]]
            self.close_connection = True
        for offset in range(0, len(payload), server.chunk):
            self.wfile.write(payload[offset : offset + server.chunk])
            self.wfile.flush()
            if server.delay:
                time.sleep(server.delay)


class FileServer(_Server):
    """Serves `files` ({url path: bytes}). `cut[path] = (nbytes, times)` ends the next
    `times` responses for path after nbytes of body; `delay` pauses after each `chunk`."""

    handler = _FileHandler

    def __init__(self, files=None, delay=0.0, chunk=64 * 1024):
        super().__init__()
        self.files = dict(files or {})
        self.cut = {}
        self.delay = delay
        self.chunk = chunk


class _ProxyHandler(_QuietHandler):
    def do_GET(self, body=True):
        proxy = self.server.owner
        with proxy.lock:
            proxy.log.append((self.command, urlsplit(self.path).path, self.headers.get("Range")))
        target = urlsplit(proxy.target)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")
        }
        conn.request(self.command, self.path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in (
                "connection",
                "keep-alive",
                "transfer-encoding",
                "content-length",
                "server",
                "date",
            ):
                self.send_header(key, value)
        # a HEAD answer carries the length of the body it leaves out
        self.send_header(
            "Content-Length",
            response.getheader("Content-Length", "0") if not body else str(len(data)),
        )
        self.end_headers()
        if body and data:
            half = len(data) // 2
            self.wfile.write(data[:half])
            self.wfile.flush()
            time.sleep(proxy.pause)
            self.wfile.write(data[half:])


class SlowProxy(_Server):
    handler = _ProxyHandler

    def __init__(self, target, pause):
        super().__init__()
        self.target = target
        self.pause = pause


class S3Server:
    """moto's S3 server on loopback; buckets hold public-read objects."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)

    def __enter__(self):
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="loopback",
            aws_secret_access_key="loopback",
        )
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def bucket(self, name, objects):
        """A new bucket holding objects ({key: bytes})."""
        from concurrent.futures import ThreadPoolExecutor

        self.client.create_bucket(Bucket=name)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda item: self.client.put_object(
                        Bucket=name, Key=item[0], Body=item[1], ACL="public-read"
                    ),
                    objects.items(),
                )
            )
        return name
