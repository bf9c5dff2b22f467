"""Presigned Walrus URLs (SigV4 and SigV2 query authentication), fetched
with urllib and no credentials; expired and tampered URLs are refused."""

import base64
import datetime
import hashlib
import hmac
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from conftest import mock_clock
from s3util import bucket_name, empty_bucket, endpoint, s3_client, s3_error, utcnow


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud)


@pytest.fixture(scope="module")
def s3v2(cloud):
    return s3_client(cloud, signature_version="s3")


@pytest.fixture
def bucket(s3):
    name = bucket_name("pre")
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def fetch(url, method="GET", data=None, headers=None):
    """(status, body, headers) of a plain urllib request, no credentials.
    The headers look up case-insensitively."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


def tamper_query(url, name, fn):
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    q = [(k, fn(v) if k == name else v) for k, v in q]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def flip(s: str) -> str:
    """Another valid-looking signature (first character changed)."""
    return ("0" if s[0] != "0" else "1") + s[1:]


def test_presigned_v4_get_and_put(s3, bucket):
    body = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="dir/obj name+1", Body=body, ContentType="x/y")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket,
                                                          "Key": "dir/obj name+1"},
                                    ExpiresIn=300)
    assert "X-Amz-Signature=" in url and url.startswith(endpoint_of(s3))
    status, got, headers = fetch(url)
    assert status == 200 and got == body
    assert headers["Content-Type"] == "x/y"
    # A presigned HEAD and a presigned GET with response overrides.
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": bucket, "Key": "dir/obj name+1",
        "ResponseContentDisposition": "attachment; filename=x.bin"})
    status, got, headers = fetch(url)
    assert status == 200 and headers["Content-Disposition"] == "attachment; filename=x.bin"
    url = s3.generate_presigned_url("head_object", Params={"Bucket": bucket,
                                                           "Key": "dir/obj name+1"})
    status, _, headers = fetch(url, method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    # PUT through a presigned URL; the object belongs to the signer.
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"},
                                    ExpiresIn=300)
    data = os.urandom(123_456)
    status, _, headers = fetch(url, method="PUT", data=data)
    assert status == 200
    assert headers["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == data
    # A presigned URL only authorises what it was signed for.
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "up"})
    status, body_, _ = fetch(get_url, method="PUT", data=b"overwrite")
    assert status == 403 and code(body_) == "SignatureDoesNotMatch"
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == data


def endpoint_of(s3):
    return s3.meta.endpoint_url


def test_presigned_v4_refusals(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    params = {"Bucket": bucket, "Key": "k"}
    good = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    assert fetch(good)[0] == 200
    # Expired: signed an hour ago, valid for a minute.
    with mock_clock(utcnow() - datetime.timedelta(hours=1)):
        old = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    status, body, _ = fetch(old)
    assert status == 403 and code(body) == "AccessDenied", body
    # Tampered signature, key, expiry, credential.
    for bad in (
        tamper_query(good, "X-Amz-Signature", flip),
        tamper_query(good, "X-Amz-Expires", lambda v: "600"),
        good.replace("/k?", "/k2?"),
        # Another second (a URL signed at :00 would otherwise come back unchanged).
        tamper_query(good, "X-Amz-Date", lambda v: v[:-3] + ("01Z" if v.endswith("00Z") else "00Z")),
    ):
        status, body, _ = fetch(bad)
        assert status in (403, 404) and code(body) in ("SignatureDoesNotMatch", "AccessDenied"), (
            bad, body)
        assert b"secret" not in body
    status, body, _ = fetch(tamper_query(
        good, "X-Amz-Credential", lambda v: "AKIANOSUCHKEY0000000" + v[v.index("/"):]))
    assert status == 403 and code(body) == "InvalidAccessKeyId"
    # Signed with the wrong secret.
    wrong = s3_client_wrong_secret(s3)
    status, body, _ = fetch(wrong.generate_presigned_url("get_object", Params=params))
    assert status == 403 and code(body) == "SignatureDoesNotMatch"
    # An expired presigned PUT writes nothing.
    with mock_clock(utcnow() - datetime.timedelta(hours=1)):
        put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "late"},
                                        ExpiresIn=60)
    status, body, _ = fetch(put, method="PUT", data=b"late")
    assert status == 403 and code(body) == "AccessDenied"
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="late")


def s3_client_wrong_secret(s3):
    import boto3
    creds = s3._request_signer._credentials
    return boto3.session.Session().client(
        "s3", endpoint_url=s3.meta.endpoint_url, region_name=s3.meta.region_name,
        aws_access_key_id=creds.access_key, aws_secret_access_key="not-" + creds.secret_key,
        config=s3.meta.config)


def test_presigned_v2(cloud, s3v2, s3, bucket):
    body = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="v2 key", Body=body)
    url = s3v2.generate_presigned_url("get_object", Params={"Bucket": bucket,
                                                            "Key": "v2 key"}, ExpiresIn=300)
    assert "Signature=" in url and "AWSAccessKeyId=" in url and "X-Amz-" not in url
    status, got, _ = fetch(url)
    assert status == 200 and got == body
    put = s3v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "v2put"},
                                      ExpiresIn=300)
    # SigV2 signs Content-Type: send none (urllib would add its own).
    status, _, _ = fetch(put, method="PUT", data=b"v2 data", headers={"Content-Type": ""})
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="v2put")["Body"].read() == b"v2 data"
    status, body_, _ = fetch(tamper_query(url, "Signature", flip))
    assert status == 403 and code(body_) == "SignatureDoesNotMatch"
    status, body_, _ = fetch(url.replace("v2%20key", "v2put"))
    assert status == 403 and code(body_) == "SignatureDoesNotMatch"
    # Expired: an Expires in the past, correctly signed by hand.
    creds = cloud.admin_creds()
    expires = int(time.time()) - 60
    sts = f"GET\n\n\n{expires}\n/{bucket}/v2put"
    sig = base64.b64encode(hmac.new(creds["secret_access_key"].encode(), sts.encode(),
                                    hashlib.sha1).digest()).decode()
    q = urllib.parse.urlencode({"AWSAccessKeyId": creds["access_key_id"],
                                "Expires": expires, "Signature": sig})
    status, body_, _ = fetch(f"{endpoint(cloud)}/{bucket}/v2put?{q}")
    assert status == 403 and code(body_) == "AccessDenied", body_
    # The same, valid for another minute, works: the hand signing is right.
    expires += 120
    sts = f"GET\n\n\n{expires}\n/{bucket}/v2put"
    sig = base64.b64encode(hmac.new(creds["secret_access_key"].encode(), sts.encode(),
                                    hashlib.sha1).digest()).decode()
    q = urllib.parse.urlencode({"AWSAccessKeyId": creds["access_key_id"],
                                "Expires": expires, "Signature": sig})
    status, got, _ = fetch(f"{endpoint(cloud)}/{bucket}/v2put?{q}")
    assert status == 200 and got == b"v2 data"


def test_sigv2_header_auth(s3v2, s3, bucket):
    """Whole requests signed with SigV2 headers (Authorization: AWS key:sig)
    on objects and the service (bucket-level requests: the next test)."""
    s3v2.put_object(Bucket=bucket, Key="h2 key", Body=b"v2 header auth", Metadata={"a": "b"},
                    ContentType="text/x-v2")
    r = s3v2.get_object(Bucket=bucket, Key="h2 key")
    assert r["Body"].read() == b"v2 header auth" and r["Metadata"] == {"a": "b"}
    assert r["ContentType"] == "text/x-v2"
    assert s3v2.head_object(Bucket=bucket, Key="h2 key")["ContentLength"] == 14
    assert s3v2.get_object(Bucket=bucket, Key="h2 key", Range="bytes=3-4")["Body"].read() == b"he"
    assert bucket in [b["Name"] for b in s3v2.list_buckets()["Buckets"]]
    s3v2.copy_object(Bucket=bucket, Key="h2 copy", CopySource=f"{bucket}/h2 key")
    assert s3.get_object(Bucket=bucket, Key="h2 copy")["Body"].read() == b"v2 header auth"
    s3v2.delete_object(Bucket=bucket, Key="h2 key")
    with s3_error("NoSuchKey", 404):
        s3.get_object(Bucket=bucket, Key="h2 key")


def test_sigv2_bucket_level(cloud, s3v2, s3, bucket):
    """Bucket-level requests signed with SigV2 headers: botocore sends the
    path `/bucket` but signs the resource `/bucket/` (with sub-resources
    such as ?acl, ?delete, ?uploads), which S3 accepts."""
    s3.put_object(Bucket=bucket, Key="d/one", Body=b"1")
    s3.put_object(Bucket=bucket, Key="two", Body=b"2")
    listed = s3v2.list_objects(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["two"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["d/"]
    assert s3v2.list_objects_v2(Bucket=bucket, Prefix="d/")["KeyCount"] == 1
    s3v2.head_bucket(Bucket=bucket)
    assert s3v2.get_bucket_acl(Bucket=bucket)["Grants"]
    s3v2.get_bucket_location(Bucket=bucket)
    assert s3v2.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    s3v2.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "two"}]})
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["d/one"]
    other = bucket_name("v2b")
    s3v2.create_bucket(Bucket=other)
    assert other in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3v2.delete_bucket(Bucket=other)
    assert other not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    # A presigned v2 URL for the bucket (query authentication) lists too.
    url = s3v2.generate_presigned_url("list_objects", Params={"Bucket": bucket}, ExpiresIn=300)
    status, got, _ = fetch(url)
    assert status == 200 and b"<Key>d/one</Key>" in got


def test_sigv2_bucket_level_by_hand(cloud, bucket):
    """The resource as AWS documents it (`/bucket` for the path `/bucket`)
    and with the slash both verify; a signature over anything else, or with
    the wrong key, is still refused."""
    creds = cloud.admin_creds()
    date = email_date()

    def get(path, resource, secret=creds["secret_access_key"]):
        sts = f"GET\n\n\n{date}\n{resource}"
        sig = base64.b64encode(hmac.new(secret.encode(), sts.encode(),
                                        hashlib.sha1).digest()).decode()
        req = urllib.request.Request(f"{endpoint(cloud)}{path}", headers={
            "Date": date, "Authorization": f"AWS {creds['access_key_id']}:{sig}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for path, resource in [(f"/{bucket}", f"/{bucket}"), (f"/{bucket}", f"/{bucket}/"),
                           (f"/{bucket}/", f"/{bucket}/"),
                           (f"/{bucket}?acl", f"/{bucket}/?acl")]:
        status, body = get(path, resource)
        assert status == 200, (path, resource, body)
    for path, resource, secret in [(f"/{bucket}", f"/{bucket}x", None),
                                   (f"/{bucket}", f"/{bucket}/", "wrong"),
                                   (f"/{bucket}?acl", f"/{bucket}/", None)]:
        status, body = get(path, resource, secret or creds["secret_access_key"])
        assert status == 403 and code(body) == "SignatureDoesNotMatch", (path, resource, body)


def email_date() -> str:
    import email.utils
    return email.utils.formatdate(usegmt=True)
