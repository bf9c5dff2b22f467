"""Walrus access control: accounts never see or touch each other's private
buckets and objects, anonymous requests reach only what is public-read,
and bad credentials are refused with S3's error codes."""

import pytest

from conftest import creds_of
from s3util import (anon_client, aws_ok, bucket_name, empty_bucket, endpoint, http,
                    s3_client, s3_error, sign_v4)


@pytest.fixture(scope="module")
def two(cloud):
    """Accounts A and B with an S3 client each; A owns a private bucket
    holding a private object and an upload in progress."""
    a_creds, b_creds = cloud.new_account("s3a"), cloud.new_account("s3b")
    a, b = s3_client(cloud, creds_of(a_creds)), s3_client(cloud, creds_of(b_creds))
    bucket = bucket_name("priv")
    a.create_bucket(Bucket=bucket)
    a.put_object(Bucket=bucket, Key="secret.txt", Body=b"A's secret")
    upload = a.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    yield dict(a=a, b=b, a_creds=a_creds, b_creds=b_creds, bucket=bucket, upload=upload)
    empty_bucket(a, bucket)


def test_other_account_is_denied_everything(two):
    a, b, bucket = two["a"], two["b"], two["bucket"]
    denied = [
        lambda: b.list_objects(Bucket=bucket),
        lambda: b.list_objects_v2(Bucket=bucket),
        lambda: b.get_object(Bucket=bucket, Key="secret.txt"),
        lambda: b.get_object(Bucket=bucket, Key="no-such-key"),  # no existence oracle
        lambda: b.put_object(Bucket=bucket, Key="intruder", Body=b"x"),
        lambda: b.delete_object(Bucket=bucket, Key="secret.txt"),
        lambda: b.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "secret.txt"}]}),
        lambda: b.delete_bucket(Bucket=bucket),
        lambda: b.get_bucket_acl(Bucket=bucket),
        lambda: b.put_bucket_acl(Bucket=bucket, ACL="public-read"),
        lambda: b.get_object_acl(Bucket=bucket, Key="secret.txt"),
        lambda: b.put_object_acl(Bucket=bucket, Key="secret.txt", ACL="public-read"),
        lambda: b.get_bucket_location(Bucket=bucket),
        lambda: b.copy_object(Bucket=bucket, Key="copy", CopySource=f"{bucket}/secret.txt"),
        lambda: b.create_multipart_upload(Bucket=bucket, Key="mp2"),
        lambda: b.upload_part(Bucket=bucket, Key="mp", UploadId=two["upload"], PartNumber=1,
                              Body=b"x"),
        lambda: b.list_parts(Bucket=bucket, Key="mp", UploadId=two["upload"]),
        lambda: b.list_multipart_uploads(Bucket=bucket),
        lambda: b.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=two["upload"]),
    ]
    for call in denied:
        with s3_error("AccessDenied", 403):
            call()
    with s3_error("403", 403):
        b.head_bucket(Bucket=bucket)
    with s3_error("403", 403):
        b.head_object(Bucket=bucket, Key="secret.txt")
    # B cannot copy A's object into its own bucket either.
    mine = bucket_name("mine")
    b.create_bucket(Bucket=mine)
    with s3_error("AccessDenied", 403):
        b.copy_object(Bucket=mine, Key="stolen", CopySource=f"{bucket}/secret.txt")
    with s3_error("AccessDenied", 403):
        b.upload_part_copy(Bucket=mine, Key="x", UploadId="u", PartNumber=1,
                           CopySource=f"{bucket}/secret.txt")
    b.delete_bucket(Bucket=mine)
    # Nothing changed for A.
    assert a.get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == b"A's secret"
    assert [o["Key"] for o in a.list_objects_v2(Bucket=bucket)["Contents"]] == ["secret.txt"]
    assert [u["UploadId"] for u in a.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [
        two["upload"]]


def test_list_buckets_shows_only_own(cloud, two):
    a, b = two["a"], two["b"]
    mine = bucket_name("bown")
    b.create_bucket(Bucket=mine)
    a_names = [x["Name"] for x in a.list_buckets()["Buckets"]]
    b_names = [x["Name"] for x in b.list_buckets()["Buckets"]]
    assert two["bucket"] in a_names and two["bucket"] not in b_names
    assert b_names == [mine] and mine not in a_names
    assert a.list_buckets()["Owner"]["ID"] == two["a_creds"]["account_id"]
    assert b.list_buckets()["Owner"]["ID"] == two["b_creds"]["account_id"]
    # The cloud administrator reads every bucket (as Eucalyptus' did, to
    # fetch users' images) but lists only its own.
    admin = s3_client(cloud)
    assert two["bucket"] not in [x["Name"] for x in admin.list_buckets()["Buckets"]]
    assert admin.get_object(Bucket=two["bucket"], Key="secret.txt")["Body"].read() == (
        b"A's secret")
    # The CLI with B's key, same profile.
    out = aws_ok(cloud, "s3", "ls", creds=creds_of(two["b_creds"]))
    assert mine in out and two["bucket"] not in out
    assert cloud.aws_error("s3", "ls", f"s3://{two['bucket']}",
                           creds=creds_of(two["b_creds"])) == "AccessDenied"
    b.delete_bucket(Bucket=mine)


def test_anonymous_access(cloud, two):
    a, bucket = two["a"], two["bucket"]
    anon = anon_client(cloud)
    with s3_error("AccessDenied", 403):
        anon.list_buckets()
    with s3_error("AccessDenied", 403):
        anon.create_bucket(Bucket=bucket_name("anon"))
    with s3_error("AccessDenied", 403):
        anon.list_objects(Bucket=bucket)
    with s3_error("AccessDenied", 403):
        anon.get_object(Bucket=bucket, Key="secret.txt")
    with s3_error("AccessDenied", 403):
        anon.put_object(Bucket=bucket, Key="anon", Body=b"x")
    with s3_error("AccessDenied", 403):
        anon.delete_object(Bucket=bucket, Key="secret.txt")
    # A public-read object in the private bucket: readable, nothing else.
    a.put_object(Bucket=bucket, Key="public.txt", Body=b"for all", ACL="public-read")
    assert anon.get_object(Bucket=bucket, Key="public.txt")["Body"].read() == b"for all"
    assert anon.head_object(Bucket=bucket, Key="public.txt")["ContentLength"] == 7
    with s3_error("AccessDenied", 403):
        anon.list_objects(Bucket=bucket)
    with s3_error("AccessDenied", 403):
        anon.get_object_acl(Bucket=bucket, Key="public.txt")
    with s3_error("AccessDenied", 403):
        anon.put_object(Bucket=bucket, Key="public.txt", Body=b"defaced")
    # Plain HTTP, no client library at all.
    status, _, body = http(cloud, "GET", f"/{bucket}/public.txt")
    assert (status, body) == (200, b"for all")
    status, _, body = http(cloud, "GET", f"/{bucket}/secret.txt")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    # A public-read bucket: listing is open; private objects in it are not.
    pub = bucket_name("pub")
    a.create_bucket(Bucket=pub, ACL="public-read")
    a.put_object(Bucket=pub, Key="open", Body=b"o", ACL="public-read")
    a.put_object(Bucket=pub, Key="closed", Body=b"c")
    assert sorted(o["Key"] for o in anon.list_objects(Bucket=pub)["Contents"]) == [
        "closed", "open"]
    assert [o["Key"] for o in anon.list_objects_v2(Bucket=pub, Prefix="o")["Contents"]] == [
        "open"]
    assert anon.head_bucket(Bucket=pub)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert anon.get_object(Bucket=pub, Key="open")["Body"].read() == b"o"
    with s3_error("AccessDenied", 403):
        anon.get_object(Bucket=pub, Key="closed")
    # With READ on the bucket, a missing key is reported as missing.
    with s3_error("NoSuchKey", 404):
        anon.get_object(Bucket=pub, Key="missing")
    with s3_error("AccessDenied", 403):
        anon.put_object(Bucket=pub, Key="anon", Body=b"x")
    with s3_error("AccessDenied", 403):
        anon.delete_bucket(Bucket=pub)
    status, _, body = http(cloud, "GET", f"/{pub}?list-type=2")
    assert status == 200 and b"<Key>open</Key>" in body and b"<Key>closed</Key>" in body
    empty_bucket(a, pub)
    a.delete_object(Bucket=bucket, Key="public.txt")


def test_public_read_write_bucket_takes_anonymous_writes(cloud, two):
    a = two["a"]
    anon = anon_client(cloud)
    name = bucket_name("prw")
    a.create_bucket(Bucket=name, ACL="public-read-write")
    anon.put_object(Bucket=name, Key="dropped", Body=b"anon data")
    # An anonymous object belongs to the bucket owner.
    acl = a.get_object_acl(Bucket=name, Key="dropped")
    assert acl["Owner"]["ID"] == two["a_creds"]["account_id"]
    assert a.get_object(Bucket=name, Key="dropped")["Body"].read() == b"anon data"
    anon.delete_object(Bucket=name, Key="dropped")
    a.delete_bucket(Bucket=name)


def test_bad_credentials(cloud, two):
    bucket = two["bucket"]
    wrong = s3_client(cloud, creds_of(two["a_creds"]), secret="wrong-secret")
    with s3_error("SignatureDoesNotMatch", 403):
        wrong.list_buckets()
    with s3_error("SignatureDoesNotMatch", 403):
        wrong.get_object(Bucket=bucket, Key="secret.txt")
    with s3_error("SignatureDoesNotMatch", 403):
        wrong.put_object(Bucket=bucket, Key="w", Body=b"x")
    unknown = s3_client(cloud, {"access_key_id": "AKIAUNKNOWNKEY000000",
                                "secret_access_key": "whatever"})
    with s3_error("InvalidAccessKeyId", 403):
        unknown.list_buckets()
    with s3_error("InvalidAccessKeyId", 403):
        unknown.get_object(Bucket=bucket, Key="secret.txt")
    # The same through SigV2.
    wrong2 = s3_client(cloud, creds_of(two["a_creds"]), secret="wrong-secret",
                       signature_version="s3")
    with s3_error("SignatureDoesNotMatch", 403):
        wrong2.list_objects(Bucket=bucket)
    # A body that does not match its signed SHA-256 is refused and not stored.
    path = f"/{bucket}/tampered"
    import hashlib
    headers = sign_v4(cloud, "PUT", f"{endpoint(cloud)}{path}", {"Content-Length": "5"},
                      payload_hash=hashlib.sha256(b"hello").hexdigest(),
                      creds=creds_of(two["a_creds"]))
    status, _, body = http(cloud, "PUT", path, headers, b"HELLO")
    assert status in (400, 403), body
    with s3_error("NoSuchKey", 404):
        two["a"].get_object(Bucket=bucket, Key="tampered")
    # A signed request replayed against another key fails.
    headers = sign_v4(cloud, "GET", f"{endpoint(cloud)}/{bucket}/secret.txt",
                      creds=creds_of(two["a_creds"]))
    status, _, body = http(cloud, "GET", f"/{bucket}/other", headers)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # The CLI reports the same codes.
    bad = {"access_key_id": two["a_creds"]["access_key_id"], "secret_access_key": "nope"}
    assert cloud.aws_error("s3api", "list-buckets", creds=bad) == "SignatureDoesNotMatch"
    # A deleted key stops working at once.
    extra = cloud.admin("access-key", "create", "--account", two["a_creds"]["account_name"])
    c = s3_client(cloud, creds_of(extra))
    assert bucket in [x["Name"] for x in c.list_buckets()["Buckets"]]
    cloud.admin("access-key", "delete", extra["access_key_id"])
    with s3_error("InvalidAccessKeyId", 403):
        c.list_buckets()
