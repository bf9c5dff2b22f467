"""Authentication: SigV4 (botocore and by hand), SigV2 as euca2ools signs
it, and the error code of each way a request can fail to authenticate."""

import datetime

import botocore
import pytest

from conftest import API_VERSION, creds_of, ec2_ns, error_code, parse_xml, raises_code, unique

DESCRIBE = {"Action": "DescribeRegions", "Version": API_VERSION}


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_sigv4_correct_and_tampered(cloud, account):
    creds, _ = account
    status, body = cloud.send_v4(DESCRIBE, creds=creds)
    assert status == 200
    status, body = cloud.send_v4(
        DESCRIBE, creds=creds,
        tamper=lambda b: b.replace(b"DescribeRegions", b"DescribeKeyPairs"))
    assert status == 401
    assert error_code(body) == "SignatureDoesNotMatch"


def test_sigv4_wrong_secret(cloud, account):
    creds, _ = account
    wrong = dict(creds, secret_access_key="x" * 40)
    with raises_code("SignatureDoesNotMatch"):
        cloud.client(wrong).describe_regions()


def test_unknown_access_key(cloud):
    fake = {"access_key_id": "AKIAUNKNOWNUNKNOWN12", "secret_access_key": "y" * 40}
    with raises_code("AuthFailure"):
        cloud.client(fake).describe_regions()
    status, body = cloud.send_v2(DESCRIBE, creds=fake)
    assert error_code(body) == "AuthFailure"


@pytest.mark.parametrize("minutes", [16, -16])
def test_sigv4_clock_skew(cloud, account, minutes):
    creds, _ = account
    skewed = utcnow() + datetime.timedelta(minutes=minutes)
    status, body = cloud.send_v4(DESCRIBE, creds=creds, now=skewed)
    assert status == 400, body
    assert error_code(body) == "RequestExpired"
    # Within the window it is fine.
    near = utcnow() - datetime.timedelta(minutes=10)
    status, body = cloud.send_v4(DESCRIBE, creds=creds, now=near)
    assert status == 200, body


def test_presigned_url_expiry(cloud, account):
    import urllib.parse

    from conftest import mock_clock
    creds, _ = account
    ec2 = cloud.client(creds_of(creds))
    signed_at = utcnow() - datetime.timedelta(minutes=20)
    with mock_clock(signed_at):
        stale = ec2.generate_presigned_url("describe_regions", Params={}, HttpMethod="GET",
                                           ExpiresIn=60)
        still_valid = ec2.generate_presigned_url("describe_regions", Params={},
                                                 HttpMethod="GET", ExpiresIn=3600)
    parts = urllib.parse.urlsplit(stale)
    status, body = cloud.send("GET", parts.path, parts.query)
    assert status == 400 and error_code(body) == "RequestExpired"
    parts = urllib.parse.urlsplit(still_valid)
    status, body = cloud.send("GET", parts.path, parts.query)
    assert status == 200, body


def test_unsigned_request(cloud):
    body = b"Action=DescribeRegions&Version=2016-11-15"
    status, resp = cloud.send("POST", "/", "", body,
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status in (400, 401, 403)
    assert error_code(resp) == "MissingAuthenticationToken"
    status, resp = cloud.send("GET", "/services/compute",
                              "Action=DescribeRegions&Version=2016-11-15")
    assert error_code(resp) == "MissingAuthenticationToken"
    unsigned = cloud.client({"access_key_id": "x", "secret_access_key": "y"},
                            signature_version=botocore.UNSIGNED)
    with raises_code("MissingAuthenticationToken"):
        unsigned.describe_regions()


def test_sigv2_correct(cloud, account):
    creds, ec2 = account
    status, body = cloud.send_v2(DESCRIBE, creds=creds)
    assert status == 200, body
    root = parse_xml(body)
    assert root.tag == f"{{{ec2_ns()}}}DescribeRegionsResponse"
    # A state-changing call signed with SigV2 lands in the signer's account.
    name = unique("v2")
    status, body = cloud.send_v2({"Action": "CreateSecurityGroup", "GroupName": name,
                                  "GroupDescription": "signed with v2 & friends"},
                                 creds=creds)
    assert status == 200, body
    got = ec2.describe_security_groups(GroupNames=[name])["SecurityGroups"][0]
    assert got["Description"] == "signed with v2 & friends"


def test_sigv2_wrong_secret(cloud, account):
    creds, _ = account
    status, body = cloud.send_v2(DESCRIBE, creds=creds, secret="z" * 40)
    assert status == 401
    assert error_code(body) == "SignatureDoesNotMatch"


def test_sigv2_tampered(cloud, account):
    creds, ec2 = account
    name = unique("v2t")

    def tamper(p):
        p = dict(p)
        p["GroupName"] = name + "-evil"
        return p

    status, body = cloud.send_v2({"Action": "CreateSecurityGroup", "GroupName": name,
                                  "GroupDescription": "d"}, creds=creds, tamper=tamper)
    assert status == 401
    assert error_code(body) == "SignatureDoesNotMatch"
    names = {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert names == {"default"}


def test_sigv2_old_timestamp(cloud, account):
    creds, _ = account
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    status, body = cloud.send_v2(DESCRIBE, creds=creds, timestamp=old)
    assert status == 400
    assert error_code(body) == "RequestExpired"


def test_sigv2_on_services_path(cloud, account):
    creds, _ = account
    status, body = cloud.send_v2(DESCRIBE, creds=creds, path="/services/Eucalyptus")
    assert status == 200, body
