"""SigV2 on `/services/objectstorage` (the API port), as euca2ools-era
clients sign S3: header-signed requests and presigned v2 URLs, signed over
the prefixed path, work there as on Walrus' own port; wrong signatures
and unknown keys are refused."""

import base64
import email.utils
import hashlib
import hmac
import time
import urllib.error
import urllib.request

import boto3
import botocore.config
import pytest

from conftest import REGION, creds_of
from s3util import bucket_name, empty_bucket, s3_client, s3_error

PREFIX = "/services/objectstorage"


def prefixed_client(cloud, creds=None, signature_version="s3"):
    creds = creds or cloud.admin_creds()
    return boto3.session.Session().client(
        "s3",
        endpoint_url=f"http://{cloud.host}{PREFIX}",
        region_name=REGION,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        config=botocore.config.Config(signature_version=signature_version,
                                      retries={"total_max_attempts": 1},
                                      s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud)


@pytest.fixture(scope="module")
def v2(cloud):
    return prefixed_client(cloud)


@pytest.fixture
def bucket(s3):
    name = bucket_name("osv2")
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def fetch(url, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_sigv2_requests_under_the_prefix(v2, s3, bucket):
    v2.put_object(Bucket=bucket, Key="a/one", Body=b"v2 under the prefix",
                  Metadata={"m": "1"}, ContentType="text/x-v2")
    g = v2.get_object(Bucket=bucket, Key="a/one")
    assert g["Body"].read() == b"v2 under the prefix" and g["Metadata"] == {"m": "1"}
    assert v2.get_object(Bucket=bucket, Key="a/one", Range="bytes=0-1")["Body"].read() == b"v2"
    assert v2.head_object(Bucket=bucket, Key="a/one")["ContentLength"] == 19
    # Bucket-level requests (botocore signs `/bucket/` for them) and the service.
    listed = v2.list_objects(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["a/"]
    assert v2.get_bucket_acl(Bucket=bucket)["Grants"]
    assert bucket in [b["Name"] for b in v2.list_buckets()["Buckets"]]
    v2.copy_object(Bucket=bucket, Key="copy", CopySource=f"{bucket}/a/one")
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == b"v2 under the prefix"
    other = bucket_name("osv2b")
    v2.create_bucket(Bucket=other)
    v2.delete_bucket(Bucket=other)
    v2.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copy"}]})
    v2.delete_object(Bucket=bucket, Key="a/one")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_presigned_v2_under_the_prefix(v2, s3, bucket):
    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned v2")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                    ExpiresIn=300)
    assert PREFIX in url and "Signature=" in url
    assert fetch(url) == (200, b"presigned v2")
    tampered = url.replace("Signature=", "Signature=AAAA")
    status, body = fetch(tampered)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    put = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "q"},
                                    ExpiresIn=300)
    status, _ = fetch(put, method="PUT", data=b"put by v2 url", headers={"Content-Type": ""})
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="q")["Body"].read() == b"put by v2 url"


def test_sigv2_by_hand_with_and_without_the_prefix(cloud, bucket, s3):
    """A client may sign the path as sent or, as Eucalyptus accepted, the
    path without the prefix; anything else, or another secret, is refused."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"by hand")
    creds = cloud.admin_creds()
    date = email.utils.formatdate(time.time(), usegmt=True)

    def get(resource, secret=creds["secret_access_key"], key=creds["access_key_id"]):
        sts = f"GET\n\n\n{date}\n{resource}"
        sig = base64.b64encode(hmac.new(secret.encode(), sts.encode(),
                                        hashlib.sha1).digest()).decode()
        return fetch(f"http://{cloud.host}{PREFIX}/{bucket}/k",
                     headers={"Date": date, "Authorization": f"AWS {key}:{sig}"})

    assert get(f"{PREFIX}/{bucket}/k") == (200, b"by hand")
    assert get(f"/{bucket}/k") == (200, b"by hand")
    status, body = get(f"/{bucket}/other")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = get(f"/{bucket}/k", secret="wrong")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = get(f"/{bucket}/k", key="AKINOSUCHKEY")
    assert status == 403 and b"InvalidAccessKeyId" in body


def test_sigv2_cross_account_is_denied_under_the_prefix(cloud, bucket):
    other = prefixed_client(cloud, creds_of(cloud.new_account("osv2")))
    with s3_error("AccessDenied", 403):
        other.list_objects(Bucket=bucket)
