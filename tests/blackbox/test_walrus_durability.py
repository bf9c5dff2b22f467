"""Walrus on disk: an upload cut by kill -9 leaves no object and, after the
restart's clean-up, no data; objects written before the kill survive
intact; a corrupted blob is never served as good data."""

import hashlib
import http.client
import os
import time

from s3util import MiB, blob_files, bucket_name, s3_client, s3_error, s3_etag, tmp_files


def all_objects(s3):
    out = []
    for b in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            out += [(b["Name"], o["Key"]) for o in page.get("Contents", [])]
    return out


def check_disk_matches_metadata(cloud, s3, pieces):
    """tmp/ is empty and every blob file belongs to an object: each single
    PUT is one data file with its .sum, a multipart object one per part."""
    assert tmp_files(cloud) == []
    data, sums = blob_files(cloud)
    assert sorted(p.name + ".sum" for p in data) == sorted(p.name for p in sums)
    assert len(data) == pieces, (data, all_objects(s3))


def test_kill9_mid_upload(fresh_cloud):
    cloud = fresh_cloud
    s3 = s3_client(cloud)
    bucket = bucket_name("crash")
    s3.create_bucket(Bucket=bucket)
    before = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="before", Body=before)
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    # A multipart upload with one part stored survives too (its part is data
    # a metadata row refers to).
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    part1 = os.urandom(5 * MiB)
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1,
                        Body=part1)["ETag"]
    check_disk_matches_metadata(cloud, s3, pieces=3)

    # Start a 200 MiB PUT with a presigned URL and a real Content-Length,
    # stream ~60 MiB of it, then kill the server.
    size = 200 * MiB
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "cut"},
                                    ExpiresIn=600)
    path = url.split(f":{cloud.walrus_port}", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", cloud.walrus_port, timeout=30)
    conn.putrequest("PUT", path)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    block = os.urandom(MiB)
    sent = 0
    while sent < 60 * MiB:
        conn.send(block)
        sent += MiB
    # The server is writing the blob into tmp/ right now.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        partial = [p for p in tmp_files(cloud) if p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.05)
    assert partial, "no partial upload in walrus/data/tmp"
    cloud.kill9()
    conn.close()
    # The half-written file is still there until the restart cleans up.
    assert tmp_files(cloud)

    cloud.start()
    assert cloud.walrus_port is not None
    s3 = s3_client(cloud)
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="cut")
    assert sorted(all_objects(s3)) == [(bucket, "before"), (bucket, "empty")]
    got = s3.get_object(Bucket=bucket, Key="before")
    assert got["ETag"] == s3_etag(before) and got["Body"].read() == before
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    check_disk_matches_metadata(cloud, s3, pieces=3)
    # The upload goes on where it stopped.
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [uid]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2,
                        Body=b"end")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == part1 + b"end"
    # The interrupted key can be written normally now.
    s3.put_object(Bucket=bucket, Key="cut", Body=b"second try")
    assert s3.get_object(Bucket=bucket, Key="cut")["Body"].read() == b"second try"
    check_disk_matches_metadata(cloud, s3, pieces=5)


def test_blobs_removed_with_their_objects(fresh_cloud):
    """Overwrites, deletes, aborted uploads and unused parts leave no data
    behind, without any restart."""
    cloud = fresh_cloud
    s3 = s3_client(cloud)
    bucket = bucket_name("gc")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a", Body=b"1")
    s3.put_object(Bucket=bucket, Key="a", Body=b"2")
    s3.put_object(Bucket=bucket, Key="b", Body=b"3")
    s3.copy_object(Bucket=bucket, Key="c", CopySource=f"{bucket}/b")
    s3.delete_object(Bucket=bucket, Key="b")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=uid)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"old")
    e1 = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"p1")["ETag"]
    s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=2, Body=b"unused")
    s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}]})
    # Refused writes leave nothing either.
    with s3_error("BadDigest", 400):
        s3.put_object(Bucket=bucket, Key="bad", Body=b"data", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")
    # a, c, m (one piece each).
    check_disk_matches_metadata(cloud, s3, pieces=3)
    cloud.stop()
    cloud.start()
    check_disk_matches_metadata(cloud, s3_client(cloud), pieces=3)
    assert s3_client(cloud).get_object(Bucket=bucket, Key="m")["Body"].read() == b"p1"


def test_corrupted_blob_is_not_served(fresh_cloud):
    cloud = fresh_cloud
    s3 = s3_client(cloud)
    bucket = bucket_name("rot")
    s3.create_bucket(Bucket=bucket)
    good = os.urandom(2 * MiB + 100)
    s3.put_object(Bucket=bucket, Key="good", Body=good)
    known = set(blob_files(cloud)[0])
    victim = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="victim", Body=victim)
    new = [p for p in blob_files(cloud)[0] if p not in known]
    assert len(new) == 1, new
    blob = new[0]
    assert blob.stat().st_size == len(victim)
    cloud.stop()
    # Flip one bit in the third MiB block.
    off = 2 * MiB + 12345
    with open(blob, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x01]))
    cloud.start()
    s3 = s3_client(cloud)
    # The full GET fails: an exception, or fewer bytes than promised; never
    # 3 MiB of (bad) data.
    try:
        data = s3.get_object(Bucket=bucket, Key="victim")["Body"].read()
    except Exception:  # botocore's IncompleteReadError / ResponseStreamingError
        data = None
    assert data is None or len(data) < len(victim), "corrupted object served in full"
    # Plain HTTP shows exactly what left the server: the intact blocks before
    # the bad one at most, then the connection ends short of Content-Length.
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "victim"})
    path = url.split(f":{cloud.walrus_port}", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", cloud.walrus_port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    received = b""
    try:
        received = r.read()
    except http.client.IncompleteRead as e:
        received = e.partial
    except ConnectionError:
        pass
    conn.close()
    if r.status == 200:
        assert int(r.getheader("Content-Length")) == len(victim)
    assert len(received) <= 2 * MiB, len(received)  # nothing of the bad block
    assert received == victim[:len(received)]
    # Ranges that stay in intact blocks are still served; ones touching the
    # bad block are not.
    ok = s3.get_object(Bucket=bucket, Key="victim", Range=f"bytes=0-{MiB - 1}")
    assert ok["Body"].read() == victim[:MiB]
    try:
        data = s3.get_object(Bucket=bucket, Key="victim",
                             Range=f"bytes={off - 10}-{off + 10}")["Body"].read()
    except Exception:
        data = None
    assert data is None or len(data) < 21
    # Other objects are unaffected; the bad object can be replaced.
    assert s3.get_object(Bucket=bucket, Key="good")["Body"].read() == good
    s3.put_object(Bucket=bucket, Key="victim", Body=victim)
    assert hashlib.md5(s3.get_object(Bucket=bucket, Key="victim")["Body"].read()
                       ).hexdigest() == hashlib.md5(victim).hexdigest()
    assert not blob.exists()  # the replaced blob is gone
