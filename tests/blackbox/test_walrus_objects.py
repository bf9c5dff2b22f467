"""Walrus objects: put/get/head/delete with metadata and stored headers,
Content-MD5, ranges, conditional requests, copies, multi-object delete,
and listings (v1 and v2, prefixes, delimiters, pagination, odd keys and
encoding-type=url), through boto3, raw HTTP and the AWS CLI."""

import datetime
import hashlib
import base64
import json
import os
import time
import urllib.parse

import pytest

from s3util import (aws_ok, bucket_name, empty_bucket, endpoint, http, keys_of,
                    raw_list_client, s3_client, s3_error, s3_etag, sign_v4, tmp_files)


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud)


@pytest.fixture
def bucket(s3):
    name = bucket_name("obj")
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


# ---- put / get / head / delete -----------------------------------------------------

def test_put_get_head_delete_with_metadata(s3, bucket):
    body = os.urandom(10_000)
    expires = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    put = s3.put_object(
        Bucket=bucket, Key="doc.bin", Body=body,
        Metadata={"colour": "blue", "Mixed-Case": "Value With Spaces"},
        ContentType="application/x-test", ContentEncoding="identity",
        ContentDisposition='attachment; filename="doc.bin"', ContentLanguage="en-NZ",
        CacheControl="max-age=60", Expires=expires)
    assert put["ETag"] == s3_etag(body)
    for r in (s3.get_object(Bucket=bucket, Key="doc.bin"),
              s3.head_object(Bucket=bucket, Key="doc.bin")):
        assert r["ETag"] == s3_etag(body)
        assert r["ContentLength"] == len(body)
        assert r["ContentType"] == "application/x-test"
        assert r["ContentEncoding"] == "identity"
        assert r["ContentDisposition"] == 'attachment; filename="doc.bin"'
        assert r["ContentLanguage"] == "en-NZ"
        assert r["CacheControl"] == "max-age=60"
        assert r["Expires"] == expires
        # S3 lower-cases user metadata names.
        assert r["Metadata"] == {"colour": "blue", "mixed-case": "Value With Spaces"}
        assert r["AcceptRanges"] == "bytes"
        assert abs((r["LastModified"] - datetime.datetime.now(datetime.timezone.utc))
                   .total_seconds()) < 120
    assert s3.get_object(Bucket=bucket, Key="doc.bin")["Body"].read() == body
    # Overwrite replaces data and headers alike.
    s3.put_object(Bucket=bucket, Key="doc.bin", Body=b"short")
    r = s3.get_object(Bucket=bucket, Key="doc.bin")
    assert r["Body"].read() == b"short"
    assert r["Metadata"] == {}
    assert "ContentLanguage" not in r
    s3.delete_object(Bucket=bucket, Key="doc.bin")
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="doc.bin")
    with s3_error("404", 404):
        s3.head_object(Bucket=bucket, Key="doc.bin")
    # Deleting a missing key succeeds, as in S3.
    assert s3.delete_object(Bucket=bucket, Key="doc.bin")[
        "ResponseMetadata"]["HTTPStatusCode"] == 204


def test_empty_and_nested_keys(s3, bucket):
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    r = s3.get_object(Bucket=bucket, Key="empty")
    assert r["ContentLength"] == 0 and r["Body"].read() == b""
    assert r["ETag"] == s3_etag(b"")
    s3.put_object(Bucket=bucket, Key="a/b/c/d.txt", Body=b"deep")
    assert s3.get_object(Bucket=bucket, Key="a/b/c/d.txt")["Body"].read() == b"deep"
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="a/b/c")


def test_content_md5(s3, bucket):
    body = b"checked body"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=body, ContentMD5=good)
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == body
    with s3_error("BadDigest", 400):
        s3.put_object(Bucket=bucket, Key="md5", Body=b"tampered body", ContentMD5=good)
    with s3_error("BadDigest", 400):
        s3.put_object(Bucket=bucket, Key="fresh", Body=body, ContentMD5=bad)
    # A refused write changes nothing.
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == body
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="fresh")


def test_raw_put_with_wrong_length_is_refused(cloud, s3, bucket):
    """A body shorter than its Content-Length (client gives up) leaves no object."""
    import socket
    path = f"/{bucket}/short"
    headers = sign_v4(cloud, "PUT", f"{endpoint(cloud)}{path}",
                      {"Content-Length": "1000"})
    with socket.create_connection(("127.0.0.1", cloud.walrus_port), timeout=10) as sock:
        req = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(req.encode() + b"\r\n" + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="short")
    # Nor any partial data: the server removes its temporary file.
    deadline = time.monotonic() + 5
    while tmp_files(cloud) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tmp_files(cloud) == []


# ---- ranges ------------------------------------------------------------------------

def test_ranges(s3, bucket):
    body = bytes(range(256)) * 40  # 10240 bytes
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    n = len(body)
    cases = {
        "bytes=0-0": (0, 1),
        "bytes=0-99": (0, 100),
        "bytes=1000-1999": (1000, 2000),
        "bytes=5000-": (5000, n),
        "bytes=-100": (n - 100, n),
        "bytes=10000-99999": (10000, n),  # an end past the object is clipped
        f"bytes={n - 1}-{n - 1}": (n - 1, n),
    }
    for rng, (lo, hi) in cases.items():
        r = s3.get_object(Bucket=bucket, Key="r", Range=rng)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206, rng
        assert r["Body"].read() == body[lo:hi], rng
        assert r["ContentLength"] == hi - lo, rng
        assert r["ContentRange"] == f"bytes {lo}-{hi - 1}/{n}", rng
        assert r["ETag"] == s3_etag(body)
    h = s3.head_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert h["ContentLength"] == 10 and h["ContentRange"] == f"bytes 10-19/{n}"
    for rng in (f"bytes={n}-", f"bytes={n + 5}-{n + 10}"):
        with s3_error("InvalidRange", 416):
            s3.get_object(Bucket=bucket, Key="r", Range=rng)


def test_conditional_get_and_head(s3, bucket):
    body = b"conditional"
    etag = s3.put_object(Bucket=bucket, Key="c", Body=body)["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    past = modified - datetime.timedelta(hours=1)
    future = modified + datetime.timedelta(hours=1)
    # 200s
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch="*")["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"0123"')["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c",
                         IfUnmodifiedSince=future)["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=modified)[
        "Body"].read() == body
    # 304 Not Modified
    for kw in ({"IfNoneMatch": etag}, {"IfNoneMatch": "*"}, {"IfModifiedSince": future},
               {"IfModifiedSince": modified}):
        with s3_error("304", 304):
            s3.get_object(Bucket=bucket, Key="c", **kw)
        with s3_error("304", 304):
            s3.head_object(Bucket=bucket, Key="c", **kw)
    # 412 Precondition Failed
    for kw in ({"IfMatch": '"0123"'}, {"IfUnmodifiedSince": past}):
        with s3_error("PreconditionFailed", 412):
            s3.get_object(Bucket=bucket, Key="c", **kw)
        with s3_error("412", 412):
            s3.head_object(Bucket=bucket, Key="c", **kw)
    # RFC 7232 precedence: a matching If-Match wins over If-Unmodified-Since,
    # a failing If-None-Match (no match) wins over If-Modified-Since.
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=past)[
        "Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"0123"',
                         IfModifiedSince=future)["Body"].read() == body


def test_response_header_overrides(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"{}", ContentType="application/json")
    r = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="text/plain",
                      ResponseContentDisposition="inline", ResponseCacheControl="no-cache",
                      ResponseContentLanguage="de", ResponseContentEncoding="identity",
                      ResponseExpires=datetime.datetime(2030, 1, 1,
                                                        tzinfo=datetime.timezone.utc))
    assert r["ContentType"] == "text/plain"
    assert r["ContentDisposition"] == "inline"
    assert r["CacheControl"] == "no-cache"
    assert r["ContentLanguage"] == "de"
    assert r["ContentEncoding"] == "identity"
    assert r["Expires"].year == 2030
    # Stored headers are unchanged.
    assert s3.head_object(Bucket=bucket, Key="o")["ContentType"] == "application/json"


# ---- copy --------------------------------------------------------------------------

def test_copy_object(s3, bucket):
    other = bucket_name("dst")
    s3.create_bucket(Bucket=other)
    try:
        body = os.urandom(4096)
        etag = s3.put_object(Bucket=bucket, Key="src key+ü", Body=body,
                             Metadata={"m": "1"}, ContentType="image/x-test")["ETag"]
        # COPY (default): metadata and headers come along.
        r = s3.copy_object(Bucket=other, Key="copy", CopySource={"Bucket": bucket,
                                                                 "Key": "src key+ü"})
        assert r["CopyObjectResult"]["ETag"] == etag
        g = s3.get_object(Bucket=other, Key="copy")
        assert g["Body"].read() == body
        assert g["Metadata"] == {"m": "1"} and g["ContentType"] == "image/x-test"
        # REPLACE: the request's metadata and headers instead.
        s3.copy_object(Bucket=bucket, Key="replaced", CopySource=f"{bucket}/src key+ü",
                       MetadataDirective="REPLACE", Metadata={"n": "2"},
                       ContentType="text/x-new")
        h = s3.head_object(Bucket=bucket, Key="replaced")
        assert h["Metadata"] == {"n": "2"} and h["ContentType"] == "text/x-new"
        assert h["ETag"] == etag
        # Copying onto itself needs REPLACE.
        with s3_error("InvalidRequest", 400):
            s3.copy_object(Bucket=bucket, Key="src key+ü",
                           CopySource={"Bucket": bucket, "Key": "src key+ü"})
        s3.copy_object(Bucket=bucket, Key="src key+ü",
                       CopySource={"Bucket": bucket, "Key": "src key+ü"},
                       MetadataDirective="REPLACE", Metadata={"m": "updated"})
        assert s3.head_object(Bucket=bucket, Key="src key+ü")["Metadata"] == {"m": "updated"}
        assert s3.get_object(Bucket=bucket, Key="src key+ü")["Body"].read() == body
        # Copy-source conditions.
        with s3_error("PreconditionFailed", 412):
            s3.copy_object(Bucket=other, Key="c2", CopySource=f"{bucket}/replaced",
                           CopySourceIfMatch='"0123"')
        with s3_error("PreconditionFailed", 412):
            s3.copy_object(Bucket=other, Key="c2", CopySource=f"{bucket}/replaced",
                           CopySourceIfNoneMatch=etag)
        with s3_error("PreconditionFailed", 412):
            s3.copy_object(Bucket=other, Key="c2", CopySource=f"{bucket}/replaced",
                           CopySourceIfModifiedSince=datetime.datetime.now(
                               datetime.timezone.utc) + datetime.timedelta(hours=1))
        with s3_error("PreconditionFailed", 412):
            s3.copy_object(Bucket=other, Key="c2", CopySource=f"{bucket}/replaced",
                           CopySourceIfUnmodifiedSince=datetime.datetime(
                               2001, 1, 1, tzinfo=datetime.timezone.utc))
        s3.copy_object(Bucket=other, Key="c2", CopySource=f"{bucket}/replaced",
                       CopySourceIfMatch=etag)
        assert s3.get_object(Bucket=other, Key="c2")["Body"].read() == body
        with s3_error("NoSuchKey", 404):
            s3.copy_object(Bucket=other, Key="c3", CopySource=f"{bucket}/missing")
        with s3_error("NoSuchBucket", 404):
            s3.copy_object(Bucket=other, Key="c3", CopySource=f"{bucket_name()}/x")
        # The source's later change does not affect the copy.
        s3.put_object(Bucket=bucket, Key="replaced", Body=b"changed")
        assert s3.get_object(Bucket=other, Key="c2")["Body"].read() == body
    finally:
        empty_bucket(s3, other)


# ---- multi-object delete -----------------------------------------------------------

def test_delete_objects(s3, bucket):
    keys = [f"d/{i}" for i in range(12)] + ["keep"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": f"d/{i}"} for i in range(12)] + [{"Key": "never-existed"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(
        [f"d/{i}" for i in range(12)] + ["never-existed"])
    assert not r.get("Errors")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == ["keep"]
    s3.put_object(Bucket=bucket, Key="q1", Body=b"1")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "q1"}], "Quiet": True})
    assert not r.get("Deleted") and not r.get("Errors")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == ["keep"]


# ---- listings ----------------------------------------------------------------------

def collect_v2(s3, bucket, **kw):
    """All pages of ListObjectsV2, by continuation token; (keys, prefixes, pages)."""
    keys, prefixes, pages = [], [], 0
    token = None
    while True:
        args = dict(kw)
        if token:
            args["ContinuationToken"] = token
        r = s3.list_objects_v2(Bucket=bucket, **args)
        pages += 1
        assert r["KeyCount"] == len(r.get("Contents", [])) + len(r.get("CommonPrefixes", []))
        assert r["KeyCount"] <= kw.get("MaxKeys", 1000)
        keys += keys_of(r)
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            assert "NextContinuationToken" not in r
            return keys, prefixes, pages
        token = r["NextContinuationToken"]
        assert pages < 100


def collect_v1(s3, bucket, **kw):
    """All pages of ListObjects, by NextMarker (or the last key, as clients do)."""
    keys, prefixes, pages = [], [], 0
    marker = None
    while True:
        args = dict(kw)
        if marker:
            args["Marker"] = marker
        r = s3.list_objects(Bucket=bucket, **args)
        pages += 1
        page_keys = keys_of(r)
        page_prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        keys += page_keys
        prefixes += page_prefixes
        if not r["IsTruncated"]:
            return keys, prefixes, pages
        marker = r.get("NextMarker") or page_keys[-1]
        if "Delimiter" in kw:
            assert r["NextMarker"] == max(page_keys + page_prefixes)
        assert pages < 100


@pytest.fixture
def tree(s3, bucket):
    """25 keys: 10 at the top, 3 'directories' of 4/5/6, in byte order."""
    keys = [f"file{i:02d}" for i in range(10)]
    keys += [f"dir-a/{i}" for i in range(4)]
    keys += [f"dir-b/sub/{i}" for i in range(5)]
    keys += [f"dir-c/{i:02d}.txt" for i in range(6)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    return bucket, sorted(keys)


def test_list_pagination_without_delimiter(s3, tree):
    bucket, keys = tree
    for collect in (collect_v1, collect_v2):
        got, prefixes, pages = collect(s3, bucket, MaxKeys=7)
        assert got == keys and prefixes == [] and pages == 4, collect.__name__
        got, _, pages = collect(s3, bucket, MaxKeys=5)
        assert got == keys and pages == 5
        got, _, pages = collect(s3, bucket)
        assert got == keys and pages == 1
    # Prefix
    want = [k for k in keys if k.startswith("dir-")]
    for collect in (collect_v1, collect_v2):
        got, _, _ = collect(s3, bucket, Prefix="dir-", MaxKeys=7)
        assert got == want
    # start-after and marker
    assert keys_of(s3.list_objects_v2(Bucket=bucket, StartAfter="dir-c/03.txt")) == [
        k for k in keys if k > "dir-c/03.txt"]
    assert keys_of(s3.list_objects(Bucket=bucket, Marker="file05")) == [
        k for k in keys if k > "file05"]
    assert keys_of(s3.list_objects_v2(Bucket=bucket, StartAfter="zzz")) == []


def test_list_pagination_with_delimiter(s3, tree):
    bucket, keys = tree
    top_files = [k for k in keys if "/" not in k]
    want_prefixes = ["dir-a/", "dir-b/", "dir-c/"]
    for collect in (collect_v1, collect_v2):
        for max_keys in (1, 2, 3, 7, 1000):
            got, prefixes, _ = collect(s3, bucket, Delimiter="/", MaxKeys=max_keys)
            assert got == top_files, (collect.__name__, max_keys)
            assert prefixes == want_prefixes, (collect.__name__, max_keys)
        got, prefixes, _ = collect(s3, bucket, Delimiter="/", Prefix="dir-b/", MaxKeys=1)
        assert got == [] and prefixes == ["dir-b/sub/"]
        got, prefixes, _ = collect(s3, bucket, Delimiter="/", Prefix="dir-c/", MaxKeys=4)
        assert got == [k for k in keys if k.startswith("dir-c/")] and prefixes == []
        # A delimiter other than '/'.
        got, prefixes, _ = collect(s3, bucket, Delimiter="-", MaxKeys=2)
        assert prefixes == ["dir-"] and got == top_files
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=1000)
    assert r["KeyCount"] == len(top_files) + 3


def test_list_folder_marker_object_at_page_end(s3, bucket):
    """A 'folder' object whose key equals the prefix (as consoles create)
    must not end the listing early when it closes a page."""
    keys = ["photos/", "photos/a.jpg", "photos/b.jpg", "photos/2024/x.jpg"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    for collect in (collect_v1, collect_v2):
        got, prefixes, _ = collect(s3, bucket, Prefix="photos/", Delimiter="/", MaxKeys=1)
        assert got == ["photos/", "photos/a.jpg", "photos/b.jpg"], collect.__name__
        assert prefixes == ["photos/2024/"], collect.__name__
        got, prefixes, _ = collect(s3, bucket, Delimiter="/", MaxKeys=1)
        assert got == [] and prefixes == ["photos/"], collect.__name__


def test_list_v2_fields_and_errors(s3, tree):
    bucket, keys = tree
    r = s3.list_objects_v2(Bucket=bucket, MaxKeys=3, Prefix="file", FetchOwner=True)
    assert r["Name"] == bucket and r["Prefix"] == "file" and r["MaxKeys"] == 3
    assert r["IsTruncated"] and r["KeyCount"] == 3
    o = r["Contents"][0]
    assert o["Key"] == "file00" and o["Size"] == len(b"file00")
    assert o["ETag"] == s3_etag(b"file00") and o["StorageClass"] == "STANDARD"
    assert o["Owner"]["ID"]
    assert "Owner" not in s3.list_objects_v2(Bucket=bucket, MaxKeys=1)["Contents"][0]
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert v1["IsTruncated"] and len(v1["Contents"]) == 2 and v1["Contents"][0]["Owner"]["ID"]
    with s3_error("InvalidArgument", 400):
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!not-a-token!!")


ODD_KEYS = [
    "with space", "plus+sign", "percent%20literal", "percent%", "ünïcödé/ключ/鍵",
    "emoji-🦭", "question?mark", "hash#tag", "amp&er=sand", "semi;colon", "tilde~",
    "quote'and\"double", "back\\slash", "star*", "comma,", "dollar$", "caret^",
    "angle<>", "brace{}", "pipe|", "tab\tkey", "a//double//slash", "trailing/",
    "colon:at@", "[bracket]", "nl\nkey",
]


def test_odd_keys_round_trip(cloud, s3, bucket):
    for i, k in enumerate(ODD_KEYS):
        s3.put_object(Bucket=bucket, Key=k, Body=f"{i}".encode())
    for i, k in enumerate(ODD_KEYS):
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == f"{i}".encode(), k
        assert s3.head_object(Bucket=bucket, Key=k)["ContentLength"] == len(f"{i}")
    want = sorted(ODD_KEYS, key=lambda k: k.encode())
    # boto3 asks for encoding-type=url and decodes; v1 and v2, paged.
    assert collect_v2(s3, bucket, MaxKeys=4)[0] == want
    assert collect_v1(s3, bucket, MaxKeys=4)[0] == want
    # Without encoding-type the keys come back raw (XML-escaped).
    raw = raw_list_client(cloud)
    got = []
    token = None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = raw.list_objects_v2(Bucket=bucket, MaxKeys=5, **kw)
        assert "EncodingType" not in r
        got += keys_of(r)
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert got == want
    # Explicit encoding-type=url, read without boto3's decoding.
    r = raw.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="plus")
    assert keys_of(r) == ["plus%2Bsign"]
    r = raw.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="with ")
    assert keys_of(r) == ["with%20space"] and r["Prefix"] == "with%20"
    # Delete them all by their odd names.
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ODD_KEYS]})
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == []


def test_cli_odd_keys(cloud, s3, bucket, tmp_path):
    """The CLI lists with encoding-type=url and decodes: odd keys survive
    ls, cp down and rm --recursive."""
    keys = ["space dir/a b.txt", "plus+dir/c+d.txt", "pct%dir/e%41.txt", "ü/ñ.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    out = aws_ok(cloud, "s3", "ls", "--recursive", f"s3://{bucket}")
    for k in keys:
        assert k in out, (k, out)
    aws_ok(cloud, "s3", "cp", "--recursive", f"s3://{bucket}", str(tmp_path / "dl"))
    for k in keys:
        assert (tmp_path / "dl" / k).read_bytes() == k.encode()
    lst = json.loads(aws_ok(cloud, "s3api", "list-objects-v2", "--bucket", bucket,
                            "--max-items", "100", "--page-size", "1"))
    assert sorted(o["Key"] for o in lst["Contents"]) == sorted(keys, key=lambda k: k.encode())
    aws_ok(cloud, "s3", "rm", "--recursive", f"s3://{bucket}")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == []


def test_raw_path_encoding(cloud, s3, bucket):
    """A percent-encoded path names the decoded key; '+' in a path is a plus."""
    s3.put_object(Bucket=bucket, Key="a+b c", Body=b"plus")
    path = f"/{bucket}/" + urllib.parse.quote("a+b c", safe="")
    status, _, body = http(cloud, "GET", path,
                           sign_v4(cloud, "GET", f"{endpoint(cloud)}{path}"))
    assert status == 200 and body == b"plus"


def test_wrong_flexible_checksum_is_refused(cloud, s3, bucket):
    """boto3 and the CLI send x-amz-checksum-crc32 with every upload (as a
    trailer over TLS, where the payload is otherwise unsigned)."""
    import zlib
    data = b"checksummed body" * 100
    wrong = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    path = f"/{bucket}/crc"
    headers = sign_v4(cloud, "PUT", f"{endpoint(cloud)}{path}",
                      {"x-amz-checksum-crc32": wrong, "Content-Length": str(len(data))},
                      payload_hash=hashlib.sha256(data).hexdigest())
    status, _, body = http(cloud, "PUT", path, headers, data)
    assert status == 400 and b"BadDigest" in body, body
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="crc")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: Python has none built in."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def digests(data: bytes) -> dict:
    """Base64 flexible-checksum values of `data`, by header name."""
    import zlib
    b64 = lambda d: base64.b64encode(d).decode()  # noqa: E731
    return {
        "x-amz-checksum-crc32": b64(zlib.crc32(data).to_bytes(4, "big")),
        "x-amz-checksum-crc32c": b64(crc32c(data).to_bytes(4, "big")),
        "x-amz-checksum-sha1": b64(hashlib.sha1(data).digest()),
        "x-amz-checksum-sha256": b64(hashlib.sha256(data).digest()),
    }


def put_with_headers(cloud, bucket, key, data, headers):
    path = f"/{bucket}/{key}"
    h = sign_v4(cloud, "PUT", f"{endpoint(cloud)}{path}",
                {**headers, "Content-Length": str(len(data))},
                payload_hash=hashlib.sha256(data).hexdigest())
    return http(cloud, "PUT", path, h, data)


def flip_first_byte(b64value: str) -> str:
    raw = bytearray(base64.b64decode(b64value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def test_flexible_checksums_each_algorithm(cloud, s3, bucket):
    """A right x-amz-checksum-* value stores the object and comes back in
    the response; a wrong one is BadDigest and stores nothing, for every
    algorithm (the body spans several of Walrus' 1 MiB blocks)."""
    data = os.urandom(2 * 1024 * 1024 + 17)
    for header, value in digests(data).items():
        key = header.rsplit("-", 1)[1]
        status, hdrs, body = put_with_headers(cloud, bucket, key, data,
                                              {header: flip_first_byte(value)})
        assert status == 400 and b"BadDigest" in body, (header, body)
        with s3_error("NoSuchKey", 404):
            s3.get_object(Bucket=bucket, Key=key)
        status, hdrs, body = put_with_headers(cloud, bucket, key, data, {header: value})
        assert status == 200, (header, body)
        assert hdrs.get(header) == value and hdrs["etag"] == s3_etag(data)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert not tmp_files(cloud)


def test_malformed_or_several_flexible_checksums_are_invalid(cloud, s3, bucket):
    data = b"x" * 1000
    sums = digests(data)
    for headers in [
        {"x-amz-checksum-crc32": "not base64!"},
        # Base64 of the wrong length for the algorithm (8 bytes for CRC32).
        {"x-amz-checksum-crc32": base64.b64encode(b"12345678").decode()},
        {"x-amz-checksum-crc32": sums["x-amz-checksum-crc32"],
         "x-amz-checksum-sha256": sums["x-amz-checksum-sha256"]},
    ]:
        status, _, body = put_with_headers(cloud, bucket, "bad", data, headers)
        assert status == 400 and b"InvalidRequest" in body, (headers, body)
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="bad")


def test_boto3_checksum_algorithms(s3, bucket):
    """boto3 computes the checksum it is asked for and sends it; Walrus
    answers with the same value (boto3 would fail the call otherwise)."""
    data = os.urandom(100_000)
    want = digests(data)
    for algo in ["CRC32", "SHA1", "SHA256"]:
        r = s3.put_object(Bucket=bucket, Key=algo, Body=data, ChecksumAlgorithm=algo)
        assert r[f"Checksum{algo}"] == want[f"x-amz-checksum-{algo.lower()}"]
        assert s3.get_object(Bucket=bucket, Key=algo)["Body"].read() == data
    # A value given by the caller is sent as is: a wrong one is refused.
    with s3_error("BadDigest", 400):
        s3.put_object(Bucket=bucket, Key="wrong", Body=data,
                      ChecksumSHA256=flip_first_byte(want["x-amz-checksum-sha256"]))
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="wrong")
