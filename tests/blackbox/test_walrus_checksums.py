"""Walrus keeps the flexible checksums (x-amz-checksum-*) objects were
uploaded with and gives them back: GetObject and HeadObject with
`x-amz-checksum-mode: ENABLED` (boto3 asks for it on every GetObject and
validates the body against a whole-object checksum), the composite
`<base64>-N` or the combined full-object checksum of a multipart upload,
and CopyObject carrying the source's checksum or computing the one it is
asked for."""

import base64
import hashlib
import zlib

import pytest

from s3util import MiB, bucket_name, empty_bucket, s3_client, s3_error, s3_etag
from test_walrus_objects import put_with_headers


def b64(d: bytes) -> str:
    return base64.b64encode(d).decode()


def _table(poly: int) -> list:
    t = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (poly if c & 1 else 0)
        t.append(c)
    return t


_CRC32C = _table(0x82F63B78)
_CRC64NVME = _table(0x9A6C9329AC4BC9B5)


def _reflected_crc(table: list, ones: int, data: bytes) -> int:
    crc = ones
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ ones


def crc32c(data: bytes) -> int:
    return _reflected_crc(_CRC32C, 0xFFFFFFFF, data)


def crc64nvme(data: bytes) -> int:
    """CRC-64/NVME (reflected polynomial 0x9A6C9329AC4BC9B5): Python has
    none built in, and a table keeps 5 MiB to a few seconds."""
    return _reflected_crc(_CRC64NVME, 0xFFFFFFFFFFFFFFFF, data)


def checksum(algo: str, data: bytes) -> str:
    """Base64 checksum of `data` by S3 algorithm name."""
    raw = {
        "CRC32": lambda: zlib.crc32(data).to_bytes(4, "big"),
        "CRC32C": lambda: crc32c(data).to_bytes(4, "big"),
        "CRC64NVME": lambda: crc64nvme(data).to_bytes(8, "big"),
        "SHA1": lambda: hashlib.sha1(data).digest(),
        "SHA256": lambda: hashlib.sha256(data).digest(),
    }[algo]()
    return b64(raw)


ALGOS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]


def raw_digest(algo: str, data: bytes) -> bytes:
    return base64.b64decode(checksum(algo, data))


FIELD = {"CRC32": "ChecksumCRC32", "CRC32C": "ChecksumCRC32C", "CRC64NVME": "ChecksumCRC64NVME",
         "SHA1": "ChecksumSHA1", "SHA256": "ChecksumSHA256"}


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud)


@pytest.fixture
def bucket(s3):
    name = bucket_name("sum")
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def summed(resp) -> dict:
    """The checksum fields of a response, by field name."""
    return {k: v for k, v in resp.items() if k.startswith("Checksum")}


def test_python_crc64nvme_matches_the_published_check_value():
    assert crc64nvme(b"123456789") == 0xAE8B14860A799888


def test_checksum_mode_returns_what_the_upload_carried(cloud, s3, bucket):
    """Every algorithm, sent as a header: kept, and returned by GET and
    HEAD only when asked for, and only for the whole object."""
    data = b"a body with a checksum " * 300
    for algo in ALGOS:
        value = checksum(algo, data)
        key = f"k-{algo}"
        status, _, body = put_with_headers(cloud, bucket, key, data,
                                           {f"x-amz-checksum-{algo.lower()}": value})
        assert status == 200, body
        h = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert summed(h) == {FIELD[algo]: value, "ChecksumType": "FULL_OBJECT"}, algo
        g = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert g[FIELD[algo]] == value and g["ChecksumType"] == "FULL_OBJECT"
        assert g["Body"].read() == data
        assert summed(s3.head_object(Bucket=bucket, Key=key)) == {}
        r = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", Range="bytes=0-9")
        assert FIELD[algo] not in r and r["Body"].read() == data[:10]


def test_boto3_default_crc32_round_trip(s3, bucket):
    """boto3 (1.36 and later) sends CRC32 with every PutObject and checks
    GetObject's body against the CRC32 it gets back."""
    data = b"default checksum" * 1000
    r = s3.put_object(Bucket=bucket, Key="dflt", Body=data)
    assert r["ChecksumCRC32"] == checksum("CRC32", data)
    g = s3.get_object(Bucket=bucket, Key="dflt", ChecksumMode="ENABLED")
    assert g["ChecksumCRC32"] == checksum("CRC32", data)
    assert g["Body"].read() == data


def upload(s3, bucket, key, parts, algo, kind=None):
    extra = {"ChecksumType": kind} if kind else {}
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algo, **extra)
    assert up["ChecksumAlgorithm"] == algo
    uid = up["UploadId"]
    done = []
    for n, data in enumerate(parts, 1):
        value = checksum(algo, data)
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=data,
                           **{FIELD[algo]: value})
        assert r[FIELD[algo]] == value
        done.append({"PartNumber": n, "ETag": r["ETag"], FIELD[algo]: value})
    lp = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)
    assert [p[FIELD[algo]] for p in lp["Parts"]] == [d[FIELD[algo]] for d in done]
    return uid, done


def test_multipart_composite_checksum(s3, bucket):
    """SHA256 parts: the object's checksum is SHA256 of the parts' SHA256s,
    with -N, as S3 gives it."""
    parts = [b"x" * (5 * MiB), b"tail of the object"]
    uid, done = upload(s3, bucket, "comp", parts, "SHA256")
    want = b64(hashlib.sha256(b"".join(raw_digest("SHA256", p) for p in parts)).digest()) + "-2"
    r = s3.complete_multipart_upload(Bucket=bucket, Key="comp", UploadId=uid,
                                     MultipartUpload={"Parts": done})
    assert r["ChecksumSHA256"] == want and r["ChecksumType"] == "COMPOSITE"
    h = s3.head_object(Bucket=bucket, Key="comp", ChecksumMode="ENABLED")
    assert h["ChecksumSHA256"] == want and h["ChecksumType"] == "COMPOSITE"
    # boto3 does not validate a composite checksum; the body is still whole.
    g = s3.get_object(Bucket=bucket, Key="comp", ChecksumMode="ENABLED")
    assert g["ChecksumSHA256"] == want and g["Body"].read() == b"".join(parts)


@pytest.mark.parametrize("algo", ["CRC32", "CRC32C", "CRC64NVME"])
def test_multipart_full_object_crc(s3, bucket, algo):
    """FULL_OBJECT CRCs: the CRC of the whole object, derived from the
    parts' without reading them; boto3 validates the CRC32 download."""
    parts = [bytes(range(256)) * (5 * MiB // 256), b"the last part" * 7]
    uid, done = upload(s3, bucket, f"full-{algo}", parts, algo, "FULL_OBJECT")
    whole = b"".join(parts)
    want = checksum(algo, whole)
    r = s3.complete_multipart_upload(Bucket=bucket, Key=f"full-{algo}", UploadId=uid,
                                     MultipartUpload={"Parts": done}, **{FIELD[algo]: want})
    assert r[FIELD[algo]] == want and r["ChecksumType"] == "FULL_OBJECT"
    g = s3.get_object(Bucket=bucket, Key=f"full-{algo}", ChecksumMode="ENABLED")
    assert g[FIELD[algo]] == want and g["Body"].read() == whole


def test_complete_refuses_wrong_checksums(s3, bucket):
    parts = [b"p" * (5 * MiB), b"end"]
    uid, done = upload(s3, bucket, "wrong", parts, "CRC32", "FULL_OBJECT")
    bad_part = [dict(done[0]), done[1]]
    bad_part[0]["ChecksumCRC32"] = checksum("CRC32", b"other")
    with s3_error("InvalidPart", 400):
        s3.complete_multipart_upload(Bucket=bucket, Key="wrong", UploadId=uid,
                                     MultipartUpload={"Parts": bad_part})
    with s3_error("BadDigest", 400):
        s3.complete_multipart_upload(Bucket=bucket, Key="wrong", UploadId=uid,
                                     MultipartUpload={"Parts": done},
                                     ChecksumCRC32=checksum("CRC32", b"other"))
    r = s3.complete_multipart_upload(Bucket=bucket, Key="wrong", UploadId=uid,
                                     MultipartUpload={"Parts": done})
    assert r["ChecksumCRC32"] == checksum("CRC32", b"".join(parts))


def test_create_refuses_impossible_checksum_types(s3, bucket):
    with s3_error("InvalidRequest", 400):
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256",
                                   ChecksumType="FULL_OBJECT")
    with s3_error("InvalidRequest", 400):
        s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC64NVME",
                                   ChecksumType="COMPOSITE")


def test_copy_carries_or_computes_checksums(cloud, s3, bucket):
    data = b"copied with its checksum" * 500
    want = {a: checksum(a, data) for a in ALGOS}
    s3.put_object(Bucket=bucket, Key="src", Body=data, ChecksumSHA256=want["SHA256"])
    # No algorithm named: the source's checksum comes along.
    r = s3.copy_object(Bucket=bucket, Key="c1", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ChecksumSHA256"] == want["SHA256"]
    assert r["CopyObjectResult"]["ETag"] == s3_etag(data)
    h = s3.head_object(Bucket=bucket, Key="c1", ChecksumMode="ENABLED")
    assert summed(h) == {"ChecksumSHA256": want["SHA256"], "ChecksumType": "FULL_OBJECT"}
    # x-amz-checksum-algorithm on the copy: computed from the data.
    for algo in ["CRC32", "CRC32C", "CRC64NVME"]:
        r = s3.copy_object(Bucket=bucket, Key=f"c-{algo}", ChecksumAlgorithm=algo,
                           CopySource={"Bucket": bucket, "Key": "src"})
        assert r["CopyObjectResult"][FIELD[algo]] == want[algo], algo
        h = s3.head_object(Bucket=bucket, Key=f"c-{algo}", ChecksumMode="ENABLED")
        assert summed(h) == {FIELD[algo]: want[algo], "ChecksumType": "FULL_OBJECT"}


def test_copy_of_a_composite_object_gets_a_whole_object_checksum(s3, bucket):
    """The copy is one piece, so a composite checksum no longer describes
    it: Walrus recomputes the algorithm over the whole object."""
    parts = [b"m" * (5 * MiB), b"rest"]
    uid, done = upload(s3, bucket, "mp", parts, "SHA1")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": done})
    r = s3.copy_object(Bucket=bucket, Key="mp-copy", CopySource={"Bucket": bucket, "Key": "mp"})
    whole = checksum("SHA1", b"".join(parts))
    assert r["CopyObjectResult"]["ChecksumSHA1"] == whole
    h = s3.head_object(Bucket=bucket, Key="mp-copy", ChecksumMode="ENABLED")
    assert summed(h) == {"ChecksumSHA1": whole, "ChecksumType": "FULL_OBJECT"}


def test_transfer_manager_upload_and_download(s3, bucket, tmp_path):
    """boto3's transfer manager with its defaults (multipart above 8 MiB,
    CRC32 on every part) up and down, validated on the way back."""
    from boto3.s3.transfer import TransferConfig
    src = tmp_path / "src.bin"
    data = bytes(range(251)) * (20 * MiB // 251)
    src.write_bytes(data)
    s3.upload_file(str(src), bucket, "tm", Config=TransferConfig(multipart_chunksize=8 * MiB))
    h = s3.head_object(Bucket=bucket, Key="tm", ChecksumMode="ENABLED")
    assert h["ContentLength"] == len(data)
    if "ChecksumCRC32" in h:
        whole = checksum("CRC32", data)
        assert h["ChecksumCRC32"] == whole or h["ChecksumCRC32"].endswith("-3")
    dst = tmp_path / "dst.bin"
    s3.download_file(bucket, "tm", str(dst))
    assert dst.read_bytes() == data
