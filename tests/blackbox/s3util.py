"""Helpers of the Walrus (S3) black-box tests: boto3 S3 clients pointed at a
cloud's Walrus port, raw HTTP, hand-signed SigV4 requests (including the
aws-chunked streaming encoding), the on-disk layout of Walrus' data dir,
and quick generation of large test files.

Everything here drives the server only from outside, like conftest.py,
whose `Cloud` it builds on.
"""

import contextlib
import datetime
import hashlib
import hmac
import http.client as httpclient
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import boto3
import botocore
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.exceptions
import pytest

from conftest import REGION, Cloud, free_port, ironbark_bin, _die_with_parent, unique

MiB = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# ---- where things are ----------------------------------------------------------

def endpoint(cloud) -> str:
    """Walrus' URL (no trailing slash): S3 at the root path of its own port."""
    return f"http://127.0.0.1:{cloud.walrus_port}"


def walrus_dir(cloud) -> Path:
    return cloud.data_dir / "walrus"


def tmp_files(cloud) -> list:
    return sorted((walrus_dir(cloud) / "data" / "tmp").iterdir())


def blob_files(cloud) -> tuple:
    """(data files, checksum files) under DIR/walrus/data/blobs."""
    data, sums = [], []
    root = walrus_dir(cloud) / "data" / "blobs"
    for p in sorted(root.glob("*/*")):
        (sums if p.name.endswith(".sum") else data).append(p)
    return data, sums


def bucket_name(prefix="bkt") -> str:
    return unique(prefix)


# ---- clients ---------------------------------------------------------------------

def s3_client(cloud, creds=None, *, signature_version=None, addressing="path",
              secret=None, **config):
    """A boto3 S3 client on Walrus signing with `creds` (default: the
    admin's); `secret` overrides the secret key (for signature failures)."""
    creds = creds or cloud.admin_creds()
    cfg = dict(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=120,
        s3={"addressing_style": addressing},
    )
    if signature_version is not None:
        cfg["signature_version"] = signature_version
    cfg.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint(cloud),
        region_name=REGION,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=secret or creds["secret_access_key"],
        config=botocore.config.Config(**cfg),
    )


def raw_list_client(cloud, creds=None):
    """An S3 client whose listings do not add encoding-type=url (botocore
    does by default, and decodes), so keys come back as the server sends
    them."""
    import botocore.handlers
    c = s3_client(cloud, creds)
    for op in ("ListObjects", "ListObjectsV2"):
        c.meta.events.unregister(f"before-parameter-build.s3.{op}",
                                 botocore.handlers.set_list_objects_encoding_type_url)
    return c


def anon_client(cloud):
    """A boto3 S3 client that sends unsigned (anonymous) requests."""
    return s3_client(cloud, {"access_key_id": "x", "secret_access_key": "x"},
                     signature_version=botocore.UNSIGNED)


@contextlib.contextmanager
def s3_error(code, status=None):
    """Expects the block to fail with S3 error `code` (and HTTP `status`)."""
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        yield ei
    err = ei.value.response["Error"]
    got_status = ei.value.response["ResponseMetadata"]["HTTPStatusCode"]
    assert err["Code"] == code, f"expected {code}, got {err['Code']}: {ei.value}"
    if status is not None:
        assert got_status == status, f"expected HTTP {status}, got {got_status}"


def keys_of(listing: dict) -> list:
    return [o["Key"] for o in listing.get("Contents", [])]


def empty_bucket(s3, bucket):
    """Removes every object and upload of a bucket, then the bucket."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
    for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    s3.delete_bucket(Bucket=bucket)


# ---- raw HTTP ---------------------------------------------------------------------

def http(cloud, method, path, headers=None, body=None, host=None, timeout=60):
    """One raw HTTP request to Walrus (http.client, so nothing is added but
    Host and Content-Length); returns (status, lower-cased headers, body)."""
    conn = httpclient.HTTPConnection("127.0.0.1", cloud.walrus_port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": host or f"127.0.0.1:{cloud.walrus_port}"}
        hdrs.update(headers or {})
        if body is not None and not any(k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


class _S3Signer(botocore.auth.S3SigV4Auth):
    """S3's SigV4 (the path signed as sent, already percent-encoded) that
    keeps the caller's x-amz-content-sha256 instead of hashing the body."""

    def _modify_request_before_signing(self, request):
        botocore.auth.SigV4Auth._modify_request_before_signing(self, request)


def sign_v4(cloud, method, url, headers=None, payload_hash="UNSIGNED-PAYLOAD", creds=None,
            now=None):
    """SigV4 headers (botocore's signer) for a request to `url`, with
    `payload_hash` as x-amz-content-sha256. `url`'s host is what gets
    signed. Returns the headers to send (Host included)."""
    creds = creds or cloud.admin_creds()
    h = dict(headers or {})
    h["X-Amz-Content-SHA256"] = payload_hash
    req = botocore.awsrequest.AWSRequest(method=method, url=url, headers=h)
    auth = _S3Signer(
        botocore.credentials.Credentials(creds["access_key_id"], creds["secret_access_key"]),
        "s3", REGION)
    if now is not None:
        from conftest import mock_clock
        with mock_clock(now):
            auth.add_auth(req)
    else:
        auth.add_auth(req)
    out = dict(req.headers.items())
    out["Host"] = urllib.parse.urlsplit(url).netloc
    return out


def _signing_key(secret, date):
    k = ("AWS4" + secret).encode()
    for m in (date, REGION, "s3", "aws4_request"):
        k = hmac.new(k, m.encode(), hashlib.sha256).digest()
    return k


def aws_chunked_signed(cloud, path, data: bytes, chunk=64 * 1024, creds=None,
                       extra_headers=None, tamper=None):
    """PUTs `data` to `path` as SigV4 streaming upload
    (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, Content-Encoding: aws-chunked,
    every chunk signed). `tamper` rewrites the encoded body after signing.
    Returns (status, headers, body)."""
    creds = creds or cloud.admin_creds()
    sizes = [min(chunk, len(data) - i) for i in range(0, len(data), chunk)] + [0]
    encoded_len = sum(len(f"{n:x};chunk-signature=") + 64 + 2 + n + 2 for n in sizes)
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "Content-Length": str(encoded_len),
    }
    headers.update(extra_headers or {})
    url = f"{endpoint(cloud)}{path}"
    signed = sign_v4(cloud, "PUT", url, headers, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", creds)
    stamp = signed["X-Amz-Date"]
    prev = signed["Authorization"].rsplit("Signature=", 1)[1]
    key = _signing_key(creds["secret_access_key"], stamp[:8])
    scope = f"{stamp[:8]}/{REGION}/s3/aws4_request"
    body = bytearray()
    at = 0
    for n in sizes:
        piece = data[at:at + n]
        at += n
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, EMPTY_SHA256,
                         hashlib.sha256(piece).hexdigest()])
        prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        body += f"{n:x};chunk-signature={prev}\r\n".encode() + piece + b"\r\n"
    assert len(body) == encoded_len
    body = bytes(body)
    if tamper:
        body = tamper(body)
    return http(cloud, "PUT", path, signed, body)


def aws_chunked_unsigned_trailer(cloud, path, data: bytes, chunk=64 * 1024, creds=None,
                                 crc=None):
    """PUTs `data` as STREAMING-UNSIGNED-PAYLOAD-TRAILER with an
    x-amz-checksum-crc32 trailer (what botocore sends over TLS); `crc`
    replaces the right value."""
    import base64
    import zlib
    crc = crc or base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body = bytearray()
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        body += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    body += f"0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    url = f"{endpoint(cloud)}{path}"
    signed = sign_v4(cloud, "PUT", url, headers, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", creds)
    return http(cloud, "PUT", path, signed, bytes(body))


# ---- data ---------------------------------------------------------------------------

def s3_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def multipart_etag(part_md5s) -> str:
    """S3's ETag of a multipart object: md5 of the parts' binary md5s, -N."""
    h = hashlib.md5(b"".join(part_md5s))
    return f'"{h.hexdigest()}-{len(part_md5s)}"'


def write_pattern_file(path: Path, size: int, part_size: int, seed=0):
    """Writes `size` pseudo-random bytes quickly (a random 1 MiB block,
    rotated per MiB) and returns (md5 hex of the whole file, binary md5s
    of each `part_size` part), so no second pass over the file is needed."""
    import random
    rnd = random.Random(seed)
    block = rnd.randbytes(MiB)
    whole = hashlib.md5()
    parts = []
    part = hashlib.md5()
    in_part = 0
    written = 0
    with open(path, "wb") as f:
        i = 0
        while written < size:
            r = (i * 7919) % MiB
            chunk = (block[r:] + block[:r])[: min(MiB, size - written)]
            f.write(chunk)
            whole.update(chunk)
            view = memoryview(chunk)
            while len(view):
                take = min(len(view), part_size - in_part)
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.md5(), 0
            written += len(chunk)
            i += 1
    if in_part:
        parts.append(part.digest())
    return whole.hexdigest(), parts


def md5_of_stream(body, chunk=MiB) -> tuple:
    """(md5 hex, length) of a botocore StreamingBody, read piecewise."""
    h = hashlib.md5()
    n = 0
    for c in body.iter_chunks(chunk):
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def md5_file(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for c in iter(lambda: f.read(MiB), b""):
            h.update(c)
    return h.hexdigest()


# ---- the AWS CLI ------------------------------------------------------------------

def aws_ok(cloud, *args, creds=None, timeout=120) -> str:
    """Runs `aws --profile ironbark-admin ARGS` (no --endpoint-url: the
    cloud's admin config names Walrus as the s3 endpoint); asserts success
    and returns stdout (`aws s3` prints text, not JSON)."""
    res = cloud.aws(*args, creds=creds, check=False, timeout=timeout)
    assert res.returncode == 0, f"aws {' '.join(args)} failed ({res.returncode}): {res.stderr}"
    return res.stdout


# ---- other S3 tools ---------------------------------------------------------------

def tool(name) -> str:
    """The path of an S3 tool (this venv's bin first, then PATH), or skip."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (s3cmd: pip install -r "
                    "tests/blackbox/requirements.txt; rclone: apt-get install rclone)")
    return found


# ---- a cloud started with an operator config file ---------------------------------

def start_with_config(root: Path, config_text: str) -> Cloud:
    """Starts `ironbark up --config FILE` (FILE holding `config_text`) as a
    conftest `Cloud`, which then stops, kills and reads it as usual."""
    cfg = root / "ironbark.conf"
    cfg.write_text(config_text)
    c = Cloud(root)
    for _ in range(5):
        c.port, c.walrus_port = free_port(), free_port()
        c._log = open(c.log_path, "ab")
        c.proc = subprocess.Popen(
            [str(ironbark_bin()), "up", "--data-dir", str(c.data_dir),
             "--listen", f"127.0.0.1:{c.port}", "--walrus-listen",
             f"127.0.0.1:{c.walrus_port}", "--config", str(cfg)],
            stdout=c._log, stderr=c._log, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        if c._wait_ready():
            return c
        c.kill9()
    raise RuntimeError(f"ironbark did not start:\n{c.log_tail()}")


def utcnow() -> datetime.datetime:
    """Naive UTC now, as conftest.mock_clock wants it."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def env_without_aws() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
