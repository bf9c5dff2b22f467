"""The Query API surface: regions and zones, the three EC2 paths, GET and
POST, the XML documents, API versions, and request-shape errors."""

import urllib.parse
import urllib.request

import pytest

from conftest import (API_VERSION, REGION, creds_of, ec2_ns, error_code, parse_xml,
                      raises_code, unique)


def test_describe_regions_boto3(admin, cloud):
    regions = admin.describe_regions()["Regions"]
    assert [r["RegionName"] for r in regions] == [REGION]
    assert regions[0]["Endpoint"] == cloud.endpoint
    named = admin.describe_regions(RegionNames=[REGION])["Regions"]
    assert len(named) == 1
    f = admin.describe_regions(Filters=[{"Name": "region-name", "Values": ["nope*"]}])
    assert f["Regions"] == []


def test_describe_regions_and_zones_cli(cloud):
    out = cloud.aws("ec2", "describe-regions")
    assert [r["RegionName"] for r in out["Regions"]] == [REGION]
    zones = cloud.aws("ec2", "describe-availability-zones")["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["zone1"]
    assert zones[0]["State"] == "available"
    assert zones[0]["RegionName"] == REGION


def test_admin_verbose_zones_show_capacity(cloud):
    zones = cloud.aws("ec2", "describe-availability-zones",
                      "--zone-names", "verbose")["AvailabilityZones"]
    names = [z["ZoneName"] for z in zones]
    assert names[0] == "zone1"
    assert "|- vm types" in names
    assert "|- m1.small" in names
    small = next(z for z in zones if z["ZoneName"] == "|- m1.small")
    # "free / max   cpu   ram  disk" columns: numbers only.
    cols = small["State"].replace("/", " ").split()
    assert len(cols) == 5 and all(c.isdigit() for c in cols), small["State"]
    assert int(cols[0]) <= int(cols[1])


def test_normal_user_verbose_zones_show_no_capacity(cloud, account):
    _, ec2 = account
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    assert not any(z["ZoneName"].startswith("|-") for z in zones)
    # A zone that does not exist is refused.
    with raises_code("InvalidParameterValue"):
        ec2.describe_availability_zones(ZoneNames=["no-such-zone"])


@pytest.mark.parametrize("path", ["/", "/services/compute", "/services/Eucalyptus"])
def test_three_paths_serve_the_api(cloud, account, path):
    creds, _ = account
    ec2 = cloud.client(creds_of(creds), path=path)
    assert ec2.describe_regions()["Regions"][0]["RegionName"] == REGION
    name = unique("path")
    gid = ec2.create_security_group(GroupName=name, Description="via " + path)["GroupId"]
    got = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert got[0]["GroupName"] == name


def test_unknown_path_is_refused(cloud):
    status, body = cloud.send_v4({"Action": "DescribeRegions", "Version": API_VERSION},
                                 path="/services/nothing")
    assert status == 404
    assert error_code(body) == "InvalidAction"


@pytest.mark.parametrize("region", ["ironbark-test", "us-east-1"])
def test_any_region_name_in_sigv4_scope(cloud, account, region):
    creds, _ = account
    ec2 = cloud.client(creds_of(creds), region=region)
    assert ec2.describe_regions()["Regions"][0]["RegionName"] == REGION
    assert ec2.describe_key_pairs()["KeyPairs"] == []


def test_presigned_get(cloud, account):
    creds, _ = account
    ec2 = cloud.client(creds_of(creds))
    url = ec2.generate_presigned_url("describe_regions", Params={}, HttpMethod="GET",
                                     ExpiresIn=300)
    parts = urllib.parse.urlsplit(url)
    qs = urllib.parse.parse_qs(parts.query)
    assert qs["Action"] == ["DescribeRegions"]
    assert "X-Amz-Signature" in qs
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        root = parse_xml(r.read())
    ns = {"e": ec2_ns()}
    assert root.tag == f"{{{ec2_ns()}}}DescribeRegionsResponse"
    assert root.find("./e:regionInfo/e:item/e:regionName", ns).text == REGION
    # The same URL with a parameter changed no longer verifies.
    bad = url.replace("Action=DescribeRegions", "Action=DescribeKeyPairs")
    assert bad != url
    status, body = cloud.send("GET", parts.path, urllib.parse.urlsplit(bad).query)
    assert status in (400, 401, 403)
    assert error_code(body) == "SignatureDoesNotMatch"


def test_hand_signed_get_and_post(cloud, account):
    creds, _ = account
    params = {"Action": "DescribeAvailabilityZones", "Version": API_VERSION}
    for method in ("GET", "POST"):
        status, body = cloud.send_v4(params, creds=creds, method=method)
        assert status == 200, body
        root = parse_xml(body)
        ns = {"e": ec2_ns()}
        assert root.find("./e:availabilityZoneInfo/e:item/e:zoneName", ns).text == "zone1"


def test_xml_shape_of_result_and_error(cloud, account):
    creds, ec2 = account
    name = unique("xml")
    ec2.create_security_group(GroupName=name, Description="d")
    version = "2014-06-15"
    status, body = cloud.send_v4({"Action": "DescribeSecurityGroups", "Version": version,
                                  "GroupName.1": name}, creds=creds)
    assert status == 200
    assert body.startswith(b"<?xml")
    root = parse_xml(body)
    ns = ec2_ns(version)
    assert root.tag == f"{{{ns}}}DescribeSecurityGroupsResponse"
    children = list(root)
    assert children[0].tag == f"{{{ns}}}requestId"
    assert len(children[0].text) >= 16
    items = root.findall(f"./{{{ns}}}securityGroupInfo/{{{ns}}}item")
    assert len(items) == 1
    assert items[0].find(f"{{{ns}}}groupName").text == name
    assert items[0].find(f"{{{ns}}}ownerId").text == creds["account_id"]

    # The error document: no namespace, Errors/Error/Code+Message, RequestID.
    status, body = cloud.send_v4({"Action": "DescribeSecurityGroups", "Version": version,
                                  "GroupName.1": unique("missing")}, creds=creds)
    assert status == 400
    root = parse_xml(body)
    assert root.tag == "Response"
    assert [c.tag for c in root] == ["Errors", "RequestID"]
    err = root.find("./Errors/Error")
    assert [c.tag for c in err] == ["Code", "Message"]
    assert err.find("Code").text == "InvalidGroup.NotFound"
    assert err.find("Message").text
    assert root.find("RequestID").text


def test_api_versions(cloud, account):
    creds, _ = account
    for version in ("2010-08-31", "2012-12-01", "2014-06-15", "2016-11-15"):
        status, body = cloud.send_v4({"Action": "DescribeRegions", "Version": version},
                                     creds=creds)
        assert status == 200, (version, body)
        assert parse_xml(body).tag == f"{{{ec2_ns(version)}}}DescribeRegionsResponse"
    for version in ("2009-11-30", "2016-11-16", "2099-01-01", "latest"):
        status, body = cloud.send_v4({"Action": "DescribeRegions", "Version": version},
                                     creds=creds)
        assert status == 400
        assert error_code(body) == "InvalidParameterValue", version


def test_invalid_missing_action_and_missing_parameter(cloud, account):
    creds, ec2 = account
    status, body = cloud.send_v4({"Action": "RunTheWorld", "Version": API_VERSION},
                                 creds=creds)
    assert status == 400 and error_code(body) == "InvalidAction"
    status, body = cloud.send_v4({"Version": API_VERSION}, creds=creds)
    assert status == 400 and error_code(body) == "MissingAction"

    name = unique("nodesc")
    status, body = cloud.send_v4({"Action": "CreateSecurityGroup", "Version": API_VERSION,
                                  "GroupName": name}, creds=creds)
    assert status == 400 and error_code(body) == "MissingParameter"
    status, body = cloud.send_v4({"Action": "CreateKeyPair", "Version": API_VERSION},
                                 creds=creds)
    assert status == 400 and error_code(body) == "MissingParameter"
    # boto3 without its client-side validation gets the server's answer too.
    loose = cloud.client(creds_of(creds), parameter_validation=False)
    with raises_code("MissingParameter"):
        loose.import_key_pair(KeyName=unique("k"))
    # Nothing was created by the failed calls.
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] \
        == ["default"]
    assert ec2.describe_key_pairs()["KeyPairs"] == []


@pytest.mark.parametrize("op,key", [
    ("describe_regions", "Regions"),
    ("describe_availability_zones", "AvailabilityZones"),
    ("describe_security_groups", "SecurityGroups"),
    ("describe_key_pairs", "KeyPairs"),
    ("describe_tags", "Tags"),
])
def test_unknown_filter_name_on_every_describe(account, op, key):
    """EC2 refuses a filter name it does not know, whatever else the call
    would return: here an account with no key pairs or tags, and an unknown
    name after a filter that already matched nothing."""
    _, ec2 = account
    call = getattr(ec2, op)
    assert call(Filters=[])[key] is not None
    with raises_code("InvalidParameterValue"):
        call(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    known = {"describe_regions": "region-name", "describe_availability_zones": "zone-name",
             "describe_security_groups": "group-name", "describe_key_pairs": "key-name",
             "describe_tags": "key"}[op]
    assert call(Filters=[{"Name": known, "Values": ["matches-nothing"]}])[key] == []
    with raises_code("InvalidParameterValue"):
        call(Filters=[{"Name": known, "Values": ["matches-nothing"]},
                      {"Name": "no-such-filter", "Values": ["x"]}])
