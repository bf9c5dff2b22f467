"""Walrus buckets: create/list/head/delete, name rules, location, bucket and
object ACLs (canned and grant headers) across accounts, through boto3 and
the AWS CLI with the admin profile (its config names Walrus as the s3
endpoint, so no --endpoint-url)."""

import json

import pytest

from conftest import creds_of
from s3util import (anon_client, aws_ok, bucket_name, empty_bucket, endpoint, s3_client,
                    s3_error)

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


@pytest.fixture(scope="module")
def s3(cloud):
    return s3_client(cloud)


@pytest.fixture(scope="module")
def owner(cloud):
    """An ordinary account's client, owner of the buckets in the ACL tests
    (the cloud administrator may read every bucket, so it is not used
    there)."""
    return s3_client(cloud, creds_of(cloud.new_account("wown")))


def grants(acl: dict) -> set:
    out = set()
    for g in acl["Grants"]:
        who = g["Grantee"].get("ID") or g["Grantee"].get("URI")
        out.add((who, g["Permission"]))
    return out


def test_bucket_lifecycle(s3):
    name = bucket_name()
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    r = s3.create_bucket(Bucket=name)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    listed = s3.list_buckets()
    assert name in [b["Name"] for b in listed["Buckets"]]
    assert listed["Owner"]["ID"]
    created = [b for b in listed["Buckets"] if b["Name"] == name][0]["CreationDate"]
    assert created.year >= 2024
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with s3_error("BucketAlreadyOwnedByYou", 409):
        s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with s3_error("BucketNotEmpty", 409):
        s3.delete_bucket(Bucket=name)
    # An unfinished multipart upload keeps the bucket non-empty as well.
    s3.delete_object(Bucket=name, Key="k")
    up = s3.create_multipart_upload(Bucket=name, Key="mp")["UploadId"]
    with s3_error("BucketNotEmpty", 409):
        s3.delete_bucket(Bucket=name)
    s3.abort_multipart_upload(Bucket=name, Key="mp", UploadId=up)
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with s3_error("404", 404):
        s3.head_bucket(Bucket=name)
    with s3_error("NoSuchBucket", 404):
        s3.delete_bucket(Bucket=name)
    with s3_error("NoSuchBucket", 404):
        s3.list_objects_v2(Bucket=name)
    with s3_error("NoSuchBucket", 404):
        s3.put_object(Bucket=name, Key="k", Body=b"x")
    # The name is free again.
    s3.create_bucket(Bucket=name)
    s3.delete_bucket(Bucket=name)


def test_bucket_names_shared_across_accounts(cloud, s3):
    name = bucket_name()
    s3.create_bucket(Bucket=name)
    other = s3_client(cloud, creds_of(cloud.new_account("wb")))
    with s3_error("BucketAlreadyExists", 409):
        other.create_bucket(Bucket=name)
    s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("bad", ["ab", "UPPER", "a..b", "192.168.1.1", "-lead", "trail-",
                                 "x" * 64, "bad_underscore"])
def test_invalid_bucket_names(s3, bad):
    with s3_error("InvalidBucketName", 400):
        s3.create_bucket(Bucket=bad)


@pytest.mark.parametrize("good", ["abc", "a.b-c", "x" * 63, "0-numeric-start"])
def test_valid_bucket_names(s3, good):
    # Fixed names: make them unique per run of this module's cloud by deleting.
    s3.create_bucket(Bucket=good)
    assert s3.head_bucket(Bucket=good)["ResponseMetadata"]["HTTPStatusCode"] == 200
    s3.delete_bucket(Bucket=good)


def test_location_constraint(s3):
    plain, located = bucket_name(), bucket_name()
    s3.create_bucket(Bucket=plain)
    s3.create_bucket(Bucket=located,
                     CreateBucketConfiguration={"LocationConstraint": "eucalyptus"})
    assert s3.get_bucket_location(Bucket=plain).get("LocationConstraint") in (None, "")
    assert s3.get_bucket_location(Bucket=located)["LocationConstraint"] == "eucalyptus"
    for bad in ("us-west-2", "EU", "nowhere"):
        with s3_error("InvalidLocationConstraint", 400):
            s3.create_bucket(Bucket=bucket_name(),
                             CreateBucketConfiguration={"LocationConstraint": bad})
    head = s3.head_bucket(Bucket=located)
    assert head["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region") == "eucalyptus"
    for b in (plain, located):
        s3.delete_bucket(Bucket=b)


def test_bucket_canned_acls(cloud, owner):
    me = owner.list_buckets()["Owner"]["ID"]
    other_creds = cloud.new_account("wacl")
    other = s3_client(cloud, creds_of(other_creds))
    anon = anon_client(cloud)
    expect = {
        "private": ({(me, "FULL_CONTROL")}, False, False),
        "public-read": ({(me, "FULL_CONTROL"), (ALL_USERS, "READ")}, True, True),
        "authenticated-read": ({(me, "FULL_CONTROL"), (AUTH_USERS, "READ")}, True, False),
    }
    for canned, (want, other_lists, anon_lists) in expect.items():
        name = bucket_name(canned[:6])
        owner.create_bucket(Bucket=name, ACL=canned)
        owner.put_object(Bucket=name, Key="k", Body=b"v")
        assert grants(owner.get_bucket_acl(Bucket=name)) == want, canned
        if other_lists:
            assert [o["Key"] for o in other.list_objects_v2(Bucket=name)["Contents"]] == ["k"]
        else:
            with s3_error("AccessDenied", 403):
                other.list_objects_v2(Bucket=name)
        if anon_lists:
            assert [o["Key"] for o in anon.list_objects(Bucket=name)["Contents"]] == ["k"]
        else:
            with s3_error("AccessDenied", 403):
                anon.list_objects(Bucket=name)
        # A bucket grant to list is no grant to read objects (private object).
        with s3_error("AccessDenied", 403):
            other.get_object(Bucket=name, Key="k")
        # Nobody but the owner reads or writes the bucket's ACL or deletes it.
        with s3_error("AccessDenied", 403):
            other.get_bucket_acl(Bucket=name)
        with s3_error("AccessDenied", 403):
            other.put_bucket_acl(Bucket=name, ACL="public-read-write")
        with s3_error("AccessDenied", 403):
            other.delete_bucket(Bucket=name)
        with s3_error("AccessDenied", 403):
            other.put_object(Bucket=name, Key="intruder", Body=b"x")
        empty_bucket(owner, name)


def test_put_bucket_acl_canned_policy_and_grants(cloud, owner):
    other_creds = cloud.new_account("wpol")
    other = s3_client(cloud, creds_of(other_creds))
    oid = other_creds["account_id"]
    me = owner.list_buckets()["Owner"]["ID"]
    name = bucket_name()
    owner.create_bucket(Bucket=name)
    with s3_error("AccessDenied", 403):
        other.list_objects(Bucket=name)
    # Canned ACL on an existing bucket.
    owner.put_bucket_acl(Bucket=name, ACL="authenticated-read")
    assert other.list_objects(Bucket=name)["Name"] == name
    owner.put_bucket_acl(Bucket=name, ACL="private")
    with s3_error("AccessDenied", 403):
        other.list_objects(Bucket=name)
    # Grant headers: the other account may write but not read.
    owner.put_bucket_acl(Bucket=name, GrantWrite=f'id="{oid}"', GrantFullControl=f"id={me}")
    assert grants(owner.get_bucket_acl(Bucket=name)) == {(oid, "WRITE"), (me, "FULL_CONTROL")}
    other.put_object(Bucket=name, Key="dropbox", Body=b"in")
    with s3_error("AccessDenied", 403):
        other.list_objects(Bucket=name)
    # A full AccessControlPolicy document.
    acl = owner.get_bucket_acl(Bucket=name)
    policy = {"Owner": acl["Owner"], "Grants": [
        {"Grantee": {"Type": "CanonicalUser", "ID": me}, "Permission": "FULL_CONTROL"},
        {"Grantee": {"Type": "CanonicalUser", "ID": oid}, "Permission": "READ"},
        {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ_ACP"},
    ]}
    owner.put_bucket_acl(Bucket=name, AccessControlPolicy=policy)
    assert grants(owner.get_bucket_acl(Bucket=name)) == {
        (me, "FULL_CONTROL"), (oid, "READ"), (ALL_USERS, "READ_ACP")}
    assert "dropbox" in [o["Key"] for o in other.list_objects(Bucket=name)["Contents"]]
    with s3_error("AccessDenied", 403):
        other.put_object(Bucket=name, Key="again", Body=b"x")
    assert grants(anon_client(cloud).get_bucket_acl(Bucket=name))  # READ_ACP to all
    # Malformed or unknown grants are refused and change nothing.
    with s3_error("InvalidArgument", 400):
        owner.put_bucket_acl(Bucket=name, GrantRead="id=999999999999")
    with s3_error("InvalidArgument", 400):
        owner.put_bucket_acl(Bucket=name, ACL="no-such-canned-acl")
    with s3_error("InvalidRequest", 400):
        owner.put_bucket_acl(Bucket=name, ACL="private", GrantRead=f"id={oid}")
    assert (oid, "READ") in grants(owner.get_bucket_acl(Bucket=name))
    # The owner's object written by the other account is the other's.
    with s3_error("AccessDenied", 403):
        owner.get_object(Bucket=name, Key="dropbox")
    owner.put_bucket_acl(Bucket=name, ACL="private")
    owner.delete_object(Bucket=name, Key="dropbox")  # WRITE on the bucket suffices
    owner.delete_bucket(Bucket=name)


def test_create_bucket_with_grant_headers(cloud, owner):
    other_creds = cloud.new_account("wgh")
    other = s3_client(cloud, creds_of(other_creds))
    name = bucket_name()
    owner.create_bucket(Bucket=name, GrantRead=f"id={other_creds['account_id']}",
                     GrantReadACP=f'uri="{AUTH_USERS}"')
    got = grants(owner.get_bucket_acl(Bucket=name))
    assert got == {(other_creds["account_id"], "READ"), (AUTH_USERS, "READ_ACP")}
    assert other.list_objects_v2(Bucket=name)["KeyCount"] == 0
    assert grants(other.get_bucket_acl(Bucket=name)) == got
    # The owner keeps its implicit right to the ACL and to delete.
    owner.put_bucket_acl(Bucket=name, ACL="private")
    with s3_error("AccessDenied", 403):
        other.list_objects_v2(Bucket=name)
    owner.delete_bucket(Bucket=name)


def test_object_acls_across_accounts(cloud, owner):
    """bucket-owner-full-control: the writer (another account with WRITE
    on the bucket) hands the bucket owner full control of its object."""
    b_creds = cloud.new_account("wobj")
    b = s3_client(cloud, creds_of(b_creds))
    owner_id = owner.list_buckets()["Owner"]["ID"]
    name = bucket_name()
    owner.create_bucket(Bucket=name, GrantWrite=f"id={b_creds['account_id']}",
                     GrantFullControl=f"id={owner_id}")
    b.put_object(Bucket=name, Key="plain", Body=b"1")
    b.put_object(Bucket=name, Key="bofc", Body=b"2", ACL="bucket-owner-full-control")
    b.put_object(Bucket=name, Key="bor", Body=b"3", ACL="bucket-owner-read")
    with s3_error("AccessDenied", 403):
        owner.get_object(Bucket=name, Key="plain")
    assert owner.get_object(Bucket=name, Key="bofc")["Body"].read() == b"2"
    assert owner.get_object(Bucket=name, Key="bor")["Body"].read() == b"3"
    assert grants(owner.get_object_acl(Bucket=name, Key="bofc")) == {
        (b_creds["account_id"], "FULL_CONTROL"), (owner_id, "FULL_CONTROL")}
    assert owner.get_object_acl(Bucket=name, Key="bofc")["Owner"]["ID"] == b_creds["account_id"]
    with s3_error("AccessDenied", 403):
        owner.get_object_acl(Bucket=name, Key="bor")
    # The object's owner opens its object to everyone.
    b.put_object_acl(Bucket=name, Key="plain", ACL="public-read")
    assert anon_client(cloud).get_object(Bucket=name, Key="plain")["Body"].read() == b"1"
    assert grants(b.get_object_acl(Bucket=name, Key="plain")) == {
        (b_creds["account_id"], "FULL_CONTROL"), (ALL_USERS, "READ")}
    b.put_object_acl(Bucket=name, Key="plain", ACL="private")
    with s3_error("AccessDenied", 403):
        anon_client(cloud).get_object(Bucket=name, Key="plain")
    with s3_error("NoSuchKey", 404):
        owner.put_object_acl(Bucket=name, Key="missing", ACL="private")
    with s3_error("NoSuchKey", 404):
        owner.get_object_acl(Bucket=name, Key="missing")
    empty_bucket(owner, name)


def test_object_acl_grant_headers_and_policy(cloud, owner):
    other_creds = cloud.new_account("wog")
    other = s3_client(cloud, creds_of(other_creds))
    oid = other_creds["account_id"]
    me = owner.list_buckets()["Owner"]["ID"]
    name = bucket_name()
    owner.create_bucket(Bucket=name)
    owner.put_object(Bucket=name, Key="k", Body=b"data", GrantRead=f"id={oid}")
    assert other.get_object(Bucket=name, Key="k")["Body"].read() == b"data"
    with s3_error("AccessDenied", 403):
        other.get_object_acl(Bucket=name, Key="k")
    acl = owner.get_object_acl(Bucket=name, Key="k")
    owner.put_object_acl(Bucket=name, Key="k", AccessControlPolicy={
        "Owner": acl["Owner"], "Grants": [
            {"Grantee": {"Type": "CanonicalUser", "ID": me}, "Permission": "FULL_CONTROL"},
            {"Grantee": {"Type": "CanonicalUser", "ID": oid}, "Permission": "READ_ACP"}]})
    assert grants(other.get_object_acl(Bucket=name, Key="k")) == {
        (me, "FULL_CONTROL"), (oid, "READ_ACP")}
    with s3_error("AccessDenied", 403):
        other.get_object(Bucket=name, Key="k")
    with s3_error("AccessDenied", 403):
        other.put_object_acl(Bucket=name, Key="k", ACL="public-read")
    empty_bucket(owner, name)


def test_cli_bucket_and_object_commands(cloud, s3, tmp_path):
    """`aws s3` and `aws s3api` with only --profile ironbark-admin (the
    cloud's admin config names Walrus' port as the s3 endpoint)."""
    assert endpoint(cloud) in (cloud.admin_dir / "config").read_text()
    name = bucket_name("cli")
    assert "make_bucket: " + name in aws_ok(cloud, "s3", "mb", f"s3://{name}")
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    src = tmp_path / "up"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "hello.txt").write_bytes(b"hello from the CLI\n")
    (src / "top.txt").write_bytes(b"top\n")
    aws_ok(cloud, "s3", "cp", "--recursive", str(src), f"s3://{name}/")
    out = aws_ok(cloud, "s3", "ls", f"s3://{name}/")
    assert "PRE dir/" in out and "top.txt" in out and "hello.txt" not in out
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]) == [
        "dir/hello.txt", "top.txt"]
    head = json.loads(aws_ok(cloud, "s3api", "head-object", "--bucket", name,
                             "--key", "dir/hello.txt"))
    assert head["ContentLength"] == len(b"hello from the CLI\n")
    # `s3 mb` sends the profile's region as LocationConstraint.
    assert json.loads(aws_ok(cloud, "s3api", "get-bucket-location", "--bucket", name)
                      )["LocationConstraint"] == "eucalyptus"
    aws_ok(cloud, "s3api", "put-object-acl", "--bucket", name, "--key", "top.txt",
           "--acl", "public-read")
    assert (ALL_USERS, "READ") in grants(s3.get_object_acl(Bucket=name, Key="top.txt"))
    # sync downloads the whole tree.
    dl = tmp_path / "sync"
    aws_ok(cloud, "s3", "sync", f"s3://{name}", str(dl))
    assert (dl / "dir" / "hello.txt").read_bytes() == b"hello from the CLI\n"
    assert (dl / "top.txt").read_bytes() == b"top\n"
    assert cloud.aws_error("s3", "rb", f"s3://{name}") == "BucketNotEmpty"
    aws_ok(cloud, "s3", "rb", "--force", f"s3://{name}")  # rm --recursive, then rb
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert cloud.aws_error("s3api", "create-bucket", "--bucket", "UPPER") == "InvalidBucketName"
