"""A client of a running server's /ajax door: form POSTs and streamed file uploads."""

from __future__ import annotations

import json
import os
import secrets
import urllib.parse
import urllib.request


def post(url: str, fields: dict, timeout: float = 60) -> dict:
    """POST form fields to /ajax and decode the envelope."""
    data = urllib.parse.urlencode(fields, doseq=True).encode()
    req = urllib.request.Request(url.rstrip("/") + "/ajax", data=data)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_file(url: str, fields: dict, path: str, timeout: float = 600) -> dict:
    """POST form fields plus the file at `path` as the multipart part `file`, streamed
    (never read whole into memory); the envelope."""
    boundary = "apppaccap-" + secrets.token_hex(16)
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items())
    name = os.path.basename(path).replace('"', "_").replace("\r", "_").replace("\n", "_")
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    fh = open(path, "rb")  # as the user running the command: their permissions apply
    size = os.fstat(fh.fileno()).st_size

    def body():
        yield head
        while chunk := fh.read(1 << 20):
            yield chunk
        yield tail

    try:
        req = urllib.request.Request(
            url.rstrip("/") + "/ajax", data=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                     "Content-Length": str(len(head) + size + len(tail))})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    finally:
        fh.close()
