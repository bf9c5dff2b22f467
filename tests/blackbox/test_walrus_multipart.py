"""Walrus multipart uploads (create, upload, copy parts, list parts and
uploads, complete with S3's ETag, abort, and every refusal), the
aws-chunked streaming encodings, flexible checksums on parts and trailers,
uploads through the AWS CLI and boto3's
transfer manager, and one 1 GiB upload."""

import base64
import hashlib
import io
import os

import pytest
from boto3.s3.transfer import TransferConfig

from s3util import (MiB, aws_chunked_signed, aws_chunked_unsigned_trailer, aws_ok,
                    bucket_name, empty_bucket, keys_of, md5_file, md5_of_stream,
                    multipart_etag, s3_client, s3_error, s3_etag, write_pattern_file)


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud, max_pool_connections=8)


@pytest.fixture
def bucket(s3):
    name = bucket_name("mp")
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def upload_parts(s3, bucket, key, upload_id, parts):
    out = []
    for n, data in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=data)
        assert r["ETag"] == s3_etag(data)
        out.append({"PartNumber": n, "ETag": r["ETag"]})
    return out


def test_multipart_upload_complete(s3, bucket):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="big", ContentType="video/x-test",
                                    Metadata={"origin": "mp"})
    uid = up["UploadId"]
    assert up["Bucket"] == bucket and up["Key"] == "big"
    done = upload_parts(s3, bucket, "big", uid, parts)
    # Not visible before completion.
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="big")
    lp = s3.list_parts(Bucket=bucket, Key="big", UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in lp["Parts"]] == [
        (i + 1, len(d), s3_etag(d)) for i, d in enumerate(parts)]
    assert not lp["IsTruncated"] and lp["Owner"]["ID"] and lp["Initiator"]["ID"]
    r = s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=uid,
                                     MultipartUpload={"Parts": done})
    want_etag = multipart_etag([hashlib.md5(d).digest() for d in parts])
    assert r["ETag"] == want_etag
    g = s3.get_object(Bucket=bucket, Key="big")
    whole = b"".join(parts)
    assert g["ETag"] == want_etag and g["ContentLength"] == len(whole)
    assert g["ContentType"] == "video/x-test" and g["Metadata"] == {"origin": "mp"}
    assert g["Body"].read() == whole
    # Ranges across part boundaries and GET by part number.
    lo, hi = 5 * MiB - 10, 10 * MiB + 5
    assert s3.get_object(Bucket=bucket, Key="big", Range=f"bytes={lo}-{hi}")[
        "Body"].read() == whole[lo:hi + 1]
    for n, d in enumerate(parts, 1):
        p = s3.get_object(Bucket=bucket, Key="big", PartNumber=n)
        assert p["Body"].read() == d
        assert p["PartsCount"] == 3
        assert p["ResponseMetadata"]["HTTPStatusCode"] == 206
    h = s3.head_object(Bucket=bucket, Key="big")
    assert h["ETag"] == want_etag and h["ContentLength"] == len(whole)
    # The upload is gone.
    with s3_error("NoSuchUpload", 404):
        s3.list_parts(Bucket=bucket, Key="big", UploadId=uid)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_part_replaced_and_subset_completed(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    a, b, c = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"
    s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=1, Body=os.urandom(100))
    e1 = s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=1, Body=a)["ETag"]
    s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=5, Body=b)
    e9 = s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=9, Body=c)["ETag"]
    lp = s3.list_parts(Bucket=bucket, Key="k", UploadId=uid)
    assert [(p["PartNumber"], p["Size"]) for p in lp["Parts"]] == [
        (1, len(a)), (5, len(b)), (9, len(c))]
    # Pagination of ListParts.
    p1 = s3.list_parts(Bucket=bucket, Key="k", UploadId=uid, MaxParts=2)
    assert [p["PartNumber"] for p in p1["Parts"]] == [1, 5] and p1["IsTruncated"]
    assert p1["NextPartNumberMarker"] == 5
    p2 = s3.list_parts(Bucket=bucket, Key="k", UploadId=uid, MaxParts=2,
                       PartNumberMarker=p1["NextPartNumberMarker"])
    assert [p["PartNumber"] for p in p2["Parts"]] == [9] and not p2["IsTruncated"]
    # Parts numbers need not be contiguous; part 5 is left out.
    r = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 9, "ETag": e9}]})
    assert r["ETag"] == multipart_etag([hashlib.md5(a).digest(), hashlib.md5(c).digest()])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == a + c


def test_multipart_errors(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="e")["UploadId"]
    small, big = os.urandom(1 * MiB), os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=1, Body=small)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=2, Body=big)["ETag"]
    e3 = s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=3, Body=b"x")["ETag"]

    def complete(parts):
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid,
                                     MultipartUpload={"Parts": parts})

    with s3_error("EntityTooSmall", 400):  # a <5 MiB part that is not the last
        complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}])
    with s3_error("InvalidPartOrder", 400):
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])
    with s3_error("InvalidPartOrder", 400):
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 2, "ETag": e2}])
    with s3_error("InvalidPart", 400):  # never uploaded
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 4, "ETag": e3}])
    with s3_error("InvalidPart", 400):  # wrong ETag
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e1}])
    with s3_error("MalformedXML", 400):
        complete([])
    for bad in (0, 10001):
        with s3_error("InvalidArgument", 400):
            s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=bad, Body=b"x")
    with s3_error("NoSuchUpload", 404):
        s3.upload_part(Bucket=bucket, Key="e", UploadId="no-such-upload", PartNumber=1,
                       Body=b"x")
    with s3_error("NoSuchUpload", 404):  # the upload id belongs to another key
        s3.upload_part(Bucket=bucket, Key="other", UploadId=uid, PartNumber=1, Body=b"x")
    with s3_error("NoSuchUpload", 404):
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId="nope",
                                     MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                 "ETag": e1}]})
    # None of the refusals hurt the upload: it still completes.
    r = s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}]})
    assert r["ETag"] == multipart_etag([hashlib.md5(big).digest(), hashlib.md5(b"x").digest()])
    assert s3.get_object(Bucket=bucket, Key="e")["ContentLength"] == len(big) + 1
    with s3_error("NoSuchUpload", 404):
        s3.abort_multipart_upload(Bucket=bucket, Key="e", UploadId=uid)
    with s3_error("NoSuchUpload", 404):  # completed uploads cannot be completed twice
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}])


def test_list_uploads_and_abort(s3, bucket):
    ids = {}
    for k in ("a/1", "a/2", "b/1", "c", "c"):
        ids.setdefault(k, []).append(
            s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"])
    s3.upload_part(Bucket=bucket, Key="c", UploadId=ids["c"][0], PartNumber=1, Body=b"p")
    r = s3.list_multipart_uploads(Bucket=bucket)
    got = [(u["Key"], u["UploadId"]) for u in r["Uploads"]]
    assert got == sorted((k, u) for k, us in ids.items() for u in us)
    assert all(u["Initiator"]["ID"] and u["Initiated"] for u in r["Uploads"])
    r = s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")
    assert [u["Key"] for u in r["Uploads"]] == ["a/1", "a/2"]
    r = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "b/"]
    assert [u["Key"] for u in r["Uploads"]] == ["c", "c"]
    # Pagination by key and upload-id markers visits every upload once.
    seen, kw = [], {}
    while True:
        r = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2, **kw)
        seen += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
        if not r["IsTruncated"]:
            break
        kw = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
    assert seen == sorted((k, u) for k, us in ids.items() for u in us)
    # Abort removes the upload and its parts.
    for k, us in ids.items():
        for u in us:
            s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=u)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with s3_error("NoSuchUpload", 404):
        s3.list_parts(Bucket=bucket, Key="c", UploadId=ids["c"][0])
    with s3_error("NoSuchUpload", 404):
        s3.upload_part(Bucket=bucket, Key="c", UploadId=ids["c"][0], PartNumber=2, Body=b"q")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == []


def test_upload_part_copy(s3, bucket):
    src = os.urandom(7 * MiB + 77)
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    r1 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src"},
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    first = src[:5 * MiB]
    assert r1["CopyPartResult"]["ETag"] == s3_etag(first)
    r2 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2,
                             CopySource=f"{bucket}/src", CopySourceRange="bytes=100-199")
    assert r2["CopyPartResult"]["ETag"] == s3_etag(src[100:200])
    # Whole-object copy as a part, then an uploaded part after it.
    r3 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=3,
                             CopySource=f"{bucket}/src")
    assert r3["CopyPartResult"]["ETag"] == s3_etag(src)
    with s3_error("InvalidRange", 416):
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=4,
                            CopySource=f"{bucket}/src",
                            CopySourceRange=f"bytes=0-{len(src)}")
    with s3_error("InvalidArgument", 400):
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=4,
                            CopySource=f"{bucket}/src", CopySourceRange="lines=1-2")
    with s3_error("PreconditionFailed", 412):
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=4,
                            CopySource=f"{bucket}/src", CopySourceIfMatch='"0000"')
    with s3_error("NoSuchKey", 404):
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=4,
                            CopySource=f"{bucket}/missing")
    parts = [{"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
             {"PartNumber": 3, "ETag": r3["CopyPartResult"]["ETag"]}]
    with s3_error("EntityTooSmall", 400):  # part 2 is 100 bytes and not last
        s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid, MultipartUpload={
            "Parts": [parts[0], {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]},
                      parts[1]]})
    r = s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid,
                                     MultipartUpload={"Parts": parts})
    assert r["ETag"] == multipart_etag([hashlib.md5(first).digest(),
                                        hashlib.md5(src).digest()])
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == first + src
    # The source object is unchanged.
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == src


# ---- aws-chunked and the common upload paths -----------------------------------

def test_aws_chunked_signed_streaming(cloud, s3, bucket):
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD: every chunk signed."""
    data = os.urandom(3 * MiB + 5)
    status, headers, body = aws_chunked_signed(cloud, f"/{bucket}/chunked", data)
    assert status == 200, body
    assert headers["etag"] == s3_etag(data)
    g = s3.get_object(Bucket=bucket, Key="chunked")
    assert g["ContentLength"] == len(data) and g["Body"].read() == data
    # aws-chunked frames the upload; it is not the object's Content-Encoding.
    assert "ContentEncoding" not in g
    status, _, body = aws_chunked_signed(cloud, f"/{bucket}/gz", b"\x1f\x8b" + data[:1000],
                                         extra_headers={"Content-Encoding": "aws-chunked,gzip"})
    assert status == 200, body
    assert s3.head_object(Bucket=bucket, Key="gz")["ContentEncoding"] == "gzip"
    # A chunk whose data does not match its signature is refused; nothing is stored.
    status, _, body = aws_chunked_signed(cloud, f"/{bucket}/badchunk", data,
                                         tamper=flip_second_chunk)
    # (S3 says 403 SignatureDoesNotMatch; Walrus 400 IncompleteBody, naming the
    # chunk signature mismatch in the message.)
    assert status in (400, 403) and b"Signature" in body, body
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="badchunk")


def flip_second_chunk(body: bytes) -> bytes:
    """Alters one byte of the second chunk's data, leaving its signature."""
    marker = b";chunk-signature="
    second = body.index(marker, body.index(marker) + 1)
    start = body.index(b"\r\n", second) + 2
    return body[:start] + bytes([body[start] ^ 1]) + body[start + 1:]


def test_aws_chunked_unsigned_trailer(cloud, s3, bucket):
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32 trailer (botocore's
    upload encoding over TLS): the trailer is verified and echoed."""
    import zlib
    data = os.urandom(2 * MiB + 3)
    status, headers, body = aws_chunked_unsigned_trailer(cloud, f"/{bucket}/trailer", data)
    assert status == 200, body
    assert headers["etag"] == s3_etag(data)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert headers["x-amz-checksum-crc32"] == crc
    assert s3.get_object(Bucket=bucket, Key="trailer")["Body"].read() == data


def test_aws_chunked_wrong_trailer_checksum_stores_nothing(cloud, s3, bucket):
    import zlib
    data = os.urandom(MiB + 5)
    wrong = base64.b64encode((zlib.crc32(data) ^ 1).to_bytes(4, "big")).decode()
    status, _, body = aws_chunked_unsigned_trailer(cloud, f"/{bucket}/bad-trailer", data,
                                                   crc=wrong)
    assert status == 400 and b"BadDigest" in body, body
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="bad-trailer")


def test_multipart_parts_with_checksums(s3, bucket):
    """Parts sent with x-amz-checksum-sha256 (as boto3 does when the upload
    names an algorithm) are verified one by one: a wrong one is refused and
    leaves no part; right ones are echoed and complete as usual."""
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="summed", ChecksumAlgorithm="SHA256")
    uid = up["UploadId"]
    sha = [base64.b64encode(hashlib.sha256(p).digest()).decode() for p in parts]
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with s3_error("BadDigest", 400):
        s3.upload_part(Bucket=bucket, Key="summed", UploadId=uid, PartNumber=1, Body=parts[0],
                       ChecksumSHA256=bad)
    assert s3.list_parts(Bucket=bucket, Key="summed", UploadId=uid).get("Parts", []) == []
    done = []
    for n, (data, want) in enumerate(zip(parts, sha), 1):
        r = s3.upload_part(Bucket=bucket, Key="summed", UploadId=uid, PartNumber=n, Body=data,
                           ChecksumAlgorithm="SHA256")
        assert r["ChecksumSHA256"] == want and r["ETag"] == s3_etag(data)
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": want})
    s3.complete_multipart_upload(Bucket=bucket, Key="summed", UploadId=uid,
                                 MultipartUpload={"Parts": done})
    assert s3.get_object(Bucket=bucket, Key="summed")["Body"].read() == b"".join(parts)


def test_cli_multipart_with_checksum_algorithm(cloud, s3, bucket, tmp_path):
    """`aws s3 cp --checksum-algorithm SHA256` sends a checksum with every
    part of its multipart upload; Walrus verifies each and the object
    arrives whole."""
    big = tmp_path / "big.bin"
    big_md5, _ = write_pattern_file(big, 20 * MiB, 8 * MiB, seed=7)
    aws_ok(cloud, "s3", "cp", "--checksum-algorithm", "SHA256", str(big),
           f"s3://{bucket}/cli-summed")
    got = s3.get_object(Bucket=bucket, Key="cli-summed")
    assert got["ContentLength"] == 20 * MiB
    assert md5_of_stream(got["Body"])[0] == big_md5


def test_cli_cp_single_and_multipart(cloud, s3, bucket, tmp_path):
    """`aws s3 cp` of 3 MiB (one PUT) and 20 MiB (the CLI's multipart,
    8 MiB parts) up and down; the multipart ETag is S3's formula."""
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(3 * MiB))
    big_md5, part_md5s = write_pattern_file(big, 20 * MiB, 8 * MiB, seed=20)
    aws_ok(cloud, "s3", "cp", str(small), f"s3://{bucket}/small.bin")
    aws_ok(cloud, "s3", "cp", str(big), f"s3://{bucket}/big.bin")
    assert s3.head_object(Bucket=bucket, Key="small.bin")["ETag"] == s3_etag(
        small.read_bytes())
    h = s3.head_object(Bucket=bucket, Key="big.bin")
    assert h["ContentLength"] == 20 * MiB
    assert h["ETag"] == multipart_etag(part_md5s)
    for name, want in (("small.bin", hashlib.md5(small.read_bytes()).hexdigest()),
                       ("big.bin", big_md5)):
        out = tmp_path / f"down-{name}"
        aws_ok(cloud, "s3", "cp", f"s3://{bucket}/{name}", str(out))
        assert md5_file(out) == want
    # The CLI's multipart copy of a multipart object (UploadPartCopy).
    aws_ok(cloud, "s3", "cp", f"s3://{bucket}/big.bin", f"s3://{bucket}/big-copy.bin")
    md5, n = md5_of_stream(s3.get_object(Bucket=bucket, Key="big-copy.bin")["Body"])
    assert (md5, n) == (big_md5, 20 * MiB)


def test_boto3_upload_fileobj_and_download(s3, bucket):
    data = os.urandom(12 * MiB + 11)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                         max_concurrency=3)
    s3.upload_fileobj(io.BytesIO(data), bucket, "fileobj", Config=cfg)
    h = s3.head_object(Bucket=bucket, Key="fileobj")
    chunks = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert h["ETag"] == multipart_etag([hashlib.md5(c).digest() for c in chunks])
    out = io.BytesIO()
    s3.download_fileobj(bucket, "fileobj", out, Config=cfg)  # ranged GETs in parallel
    assert out.getvalue() == data
    s3.upload_fileobj(io.BytesIO(data[:1000]), bucket, "small-fileobj")
    assert s3.get_object(Bucket=bucket, Key="small-fileobj")["Body"].read() == data[:1000]


def test_one_gib_multipart(s3, bucket, tmp_path):
    """1 GiB through boto3's transfer manager in 64 MiB parts, 4 threads
    (the slowest test here, ~20 s; deselect with -k 'not one_gib')."""
    size, part = 1024 * MiB, 64 * MiB
    path = tmp_path / "1gib.bin"
    try:
        whole_md5, part_md5s = write_pattern_file(path, size, part, seed=1)
        cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                             max_concurrency=4)
        s3.upload_file(str(path), bucket, "gib", Config=cfg)
    finally:
        path.unlink(missing_ok=True)
    h = s3.head_object(Bucket=bucket, Key="gib")
    assert h["ContentLength"] == size
    assert h["ETag"] == multipart_etag(part_md5s) and h["ETag"].endswith('-16"')
    md5, n = md5_of_stream(s3.get_object(Bucket=bucket, Key="gib")["Body"], chunk=4 * MiB)
    assert (md5, n) == (whole_md5, size)
    s3.delete_object(Bucket=bucket, Key="gib")
