"""Security groups and ingress rules: structured and legacy flat forms,
source-group rules, every error code, filters, and that a failed call
changes nothing."""

import pytest

from conftest import ec2_ns, error_code, parse_xml, raises_code, unique


def perms_of(ec2, gid):
    """A group's rules as a set of (proto, from, to, source) tuples."""
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    out = set()
    for p in g["IpPermissions"]:
        key = (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"))
        for r in p.get("IpRanges", []):
            out.add(key + (r["CidrIp"],))
        for u in p.get("UserIdGroupPairs", []):
            out.add(key + (u["GroupId"],))
    return out


def tcp(port_from, port_to, cidr):
    return {"IpProtocol": "tcp", "FromPort": port_from, "ToPort": port_to,
            "IpRanges": [{"CidrIp": cidr}]}


def test_group_lifecycle_boto3(account):
    creds, ec2 = account
    name = unique("web")
    gid = ec2.create_security_group(GroupName=name, Description="web servers")["GroupId"]
    assert gid.startswith("sg-")
    g = ec2.describe_security_groups(GroupNames=[name])["SecurityGroups"][0]
    assert (g["GroupId"], g["GroupName"], g["Description"], g["OwnerId"]) == \
        (gid, name, "web servers", creds["account_id"])
    assert g["IpPermissions"] == []
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        tcp(22, 22, "10.0.0.0/8"),
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}, {"CidrIp": "192.168.1.0/24"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": 0, "IpRanges": [{"CidrIp": "1.2.3.4/32"}]},
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
         "UserIdGroupPairs": [{"GroupName": "default"}]},
    ])
    default_id = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    assert perms_of(ec2, gid) == {
        ("tcp", 22, 22, "10.0.0.0/8"),
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("tcp", 80, 80, "192.168.1.0/24"),
        ("icmp", 8, 0, "1.2.3.4/32"),
        ("udp", 53, 53, default_id),
    }
    # One permission per protocol/port range, with its sources under it.
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    http = [p for p in g["IpPermissions"] if p.get("FromPort") == 80]
    assert len(http) == 1 and len(http[0]["IpRanges"]) == 2
    ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[tcp(80, 80, "0.0.0.0/0")])
    ec2.revoke_security_group_ingress(GroupName=name, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
         "UserIdGroupPairs": [{"GroupId": default_id}]}])
    assert perms_of(ec2, gid) == {
        ("tcp", 22, 22, "10.0.0.0/8"),
        ("tcp", 80, 80, "192.168.1.0/24"),
        ("icmp", 8, 0, "1.2.3.4/32"),
    }
    ec2.delete_security_group(GroupId=gid)
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupIds=[gid])


def test_default_group(account):
    creds, ec2 = account
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]
    d = groups[0]
    assert d["OwnerId"] == creds["account_id"]
    # EC2-Classic default: members reach each other on every port.
    assert perms_of(ec2, d["GroupId"]) == {
        ("tcp", 0, 65535, d["GroupId"]),
        ("udp", 0, 65535, d["GroupId"]),
        ("icmp", -1, -1, d["GroupId"]),
    }
    with raises_code("InvalidGroup.Reserved"):
        ec2.create_security_group(GroupName="default", Description="again")
    with raises_code("CannotDelete"):
        ec2.delete_security_group(GroupName="default")
    with raises_code("CannotDelete"):
        ec2.delete_security_group(GroupId=d["GroupId"])
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]


def test_group_errors(account):
    _, ec2 = account
    name = unique("err")
    gid = ec2.create_security_group(GroupName=name, Description="one")["GroupId"]
    with raises_code("InvalidGroup.Duplicate"):
        ec2.create_security_group(GroupName=name, Description="two")
    missing = unique("missing")
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupNames=[missing])
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupNames=[name, missing])
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupIds=["sg-0123456789abcdef0"])
    with raises_code("InvalidGroup.NotFound"):
        ec2.delete_security_group(GroupName=missing)
    with raises_code("InvalidGroup.NotFound"):
        ec2.authorize_security_group_ingress(GroupName=missing,
                                             IpPermissions=[tcp(22, 22, "0.0.0.0/0")])
    for bad_name in ("sg-named", "x" * 256, "tab\there"):
        with raises_code("InvalidParameterValue"):
            ec2.create_security_group(GroupName=bad_name, Description="d")
    for bad in ("sg-xyz", "sg-12345", "sg-1234ABCD"):
        with raises_code("InvalidGroupId.Malformed"):
            ec2.describe_security_groups(GroupIds=[bad])
    with raises_code("InvalidGroupId.Malformed"):
        ec2.delete_security_group(GroupId="sg-nothex00")
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert sorted(g["GroupName"] for g in groups) == sorted(["default", name])
    assert next(g for g in groups if g["GroupId"] == gid)["Description"] == "one"


def test_group_in_use(account):
    _, ec2 = account
    src, dst = unique("src"), unique("dst")
    src_id = ec2.create_security_group(GroupName=src, Description="s")["GroupId"]
    dst_id = ec2.create_security_group(GroupName=dst, Description="d")["GroupId"]
    perm = {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
            "UserIdGroupPairs": [{"GroupId": src_id}]}
    ec2.authorize_security_group_ingress(GroupId=dst_id, IpPermissions=[perm])
    with raises_code("InvalidGroup.InUse"):
        ec2.delete_security_group(GroupId=src_id)
    with raises_code("InvalidGroup.InUse"):
        ec2.delete_security_group(GroupName=src)
    assert ec2.describe_security_groups(GroupIds=[src_id])["SecurityGroups"]
    assert perms_of(ec2, dst_id) == {("tcp", 5432, 5432, src_id)}
    ec2.revoke_security_group_ingress(GroupId=dst_id, IpPermissions=[perm])
    ec2.delete_security_group(GroupId=src_id)
    # A group referring to itself does not block its own deletion.
    ec2.authorize_security_group_ingress(GroupId=dst_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2,
         "UserIdGroupPairs": [{"GroupId": dst_id}]}])
    ec2.delete_security_group(GroupId=dst_id)
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]


def test_permission_duplicate_and_not_found(account):
    _, ec2 = account
    gid = ec2.create_security_group(GroupName=unique("perm"), Description="p")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[tcp(22, 22, "10.0.0.0/8")])
    with raises_code("InvalidPermission.Duplicate"):
        ec2.authorize_security_group_ingress(GroupId=gid,
                                             IpPermissions=[tcp(22, 22, "10.0.0.0/8")])
    # A batch with one new and one duplicate rule adds neither.
    with raises_code("InvalidPermission.Duplicate"):
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            tcp(443, 443, "0.0.0.0/0"), tcp(22, 22, "10.0.0.0/8")])
    assert perms_of(ec2, gid) == {("tcp", 22, 22, "10.0.0.0/8")}
    with raises_code("InvalidPermission.NotFound"):
        ec2.revoke_security_group_ingress(GroupId=gid,
                                          IpPermissions=[tcp(23, 23, "10.0.0.0/8")])
    # A batch with one existing and one missing rule revokes neither.
    with raises_code("InvalidPermission.NotFound"):
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
            tcp(22, 22, "10.0.0.0/8"), tcp(22, 22, "11.0.0.0/8")])
    assert perms_of(ec2, gid) == {("tcp", 22, 22, "10.0.0.0/8")}


@pytest.mark.parametrize("perm", [
    tcp(22, 22, "10.0.0.0/33"),
    tcp(22, 22, "300.0.0.0/8"),
    tcp(22, 22, "10.0.0.0"),
    tcp(22, 22, "bogus"),
    tcp(0, 70000, "0.0.0.0/0"),
    tcp(70000, 70000, "0.0.0.0/0"),
    tcp(100, 10, "0.0.0.0/0"),
    {"IpProtocol": "gre", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": 3, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "icmp", "FromPort": 300, "ToPort": 0, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
], ids=["prefix33", "octet300", "nomask", "garbage", "to70000", "both70000", "from>to",
        "gre", "icmp-1code3", "icmp300"])
def test_invalid_permission_values(account, perm):
    _, ec2 = account
    gid = ec2.create_security_group(GroupName=unique("inv"), Description="i")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[tcp(22, 22, "10.0.0.0/8")])
    with raises_code("InvalidParameterValue"):
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            tcp(80, 80, "0.0.0.0/0"), perm])
    with raises_code("InvalidParameterValue"):
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
            tcp(22, 22, "10.0.0.0/8"), perm])
    assert perms_of(ec2, gid) == {("tcp", 22, 22, "10.0.0.0/8")}


def test_invalid_protocol_and_ports_cli(cloud):
    creds = cloud.new_account()
    name = unique("cliinv")
    cloud.aws("ec2", "create-security-group", "--group-name", name,
              "--description", "d", creds=creds)
    for args in (["--protocol", "tcp", "--port", "70000", "--cidr", "0.0.0.0/0"],
                 ["--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/40"],
                 # (the CLI itself refuses --protocol bogus; this form passes it on)
                 ["--ip-permissions",
                  "IpProtocol=bogus,FromPort=22,ToPort=22,IpRanges=[{CidrIp=0.0.0.0/0}]"]):
        assert cloud.aws_error("ec2", "authorize-security-group-ingress", "--group-name",
                               name, *args, creds=creds) == "InvalidParameterValue"
    g = cloud.aws("ec2", "describe-security-groups", "--group-names", name,
                  creds=creds)["SecurityGroups"][0]
    assert g["IpPermissions"] == []


def test_all_protocols_and_numbers(account):
    _, ec2 = account
    gid = ec2.create_security_group(GroupName=unique("all"), Description="a")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "172.16.0.0/12"}]},
        {"IpProtocol": "6", "FromPort": 8080, "ToPort": 8081,
         "IpRanges": [{"CidrIp": "10.1.2.3/8"}]},
        # ICMP echo request, every code.
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        # TCP with no ports: every port (EC2-Classic).
        {"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "9.9.9.9/32"}]},
    ])
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    by_proto = {p["IpProtocol"]: p for p in g["IpPermissions"]}
    assert {p["IpProtocol"] for p in g["IpPermissions"]} == {"-1", "tcp", "icmp"}
    assert by_proto["-1"]["IpRanges"] == [{"CidrIp": "172.16.0.0/12"}]
    # Host bits are cleared, as EC2 normalises blocks.
    assert perms_of(ec2, gid) == {
        ("-1", None, None, "172.16.0.0/12"),
        ("tcp", 8080, 8081, "10.0.0.0/8"),
        ("icmp", 8, -1, "0.0.0.0/0"),
        ("tcp", 0, 65535, "9.9.9.9/32"),
    }


def test_legacy_flat_authorize_old_version(cloud, account):
    """API 2010-08-31 with the classic flat parameters, signed by hand."""
    creds, ec2 = account
    web, src = unique("flat"), unique("flatsrc")
    web_id = ec2.create_security_group(GroupName=web, Description="w")["GroupId"]
    src_id = ec2.create_security_group(GroupName=src, Description="s")["GroupId"]
    v = "2010-08-31"
    status, body = cloud.send_v4({
        "Action": "AuthorizeSecurityGroupIngress", "Version": v, "GroupName": web,
        "IpProtocol": "tcp", "FromPort": "22", "ToPort": "22", "CidrIp": "0.0.0.0/0"},
        creds=creds)
    assert status == 200, body
    root = parse_xml(body)
    assert root.tag == f"{{{ec2_ns(v)}}}AuthorizeSecurityGroupIngressResponse"
    assert root.find(f"{{{ec2_ns(v)}}}return").text == "true"
    # Only a source group: tcp 0-65535, udp 0-65535 and icmp -1 from it.
    status, body = cloud.send_v4({
        "Action": "AuthorizeSecurityGroupIngress", "Version": v, "GroupName": web,
        "SourceSecurityGroupName": src,
        "SourceSecurityGroupOwnerId": creds["account_id"]}, creds=creds)
    assert status == 200, body
    assert perms_of(ec2, web_id) == {
        ("tcp", 22, 22, "0.0.0.0/0"),
        ("tcp", 0, 65535, src_id),
        ("udp", 0, 65535, src_id),
        ("icmp", -1, -1, src_id),
    }
    # The same flat rule again is a duplicate.
    status, body = cloud.send_v4({
        "Action": "AuthorizeSecurityGroupIngress", "Version": v, "GroupName": web,
        "IpProtocol": "tcp", "FromPort": "22", "ToPort": "22", "CidrIp": "0.0.0.0/0"},
        creds=creds)
    assert status == 400 and error_code(body) == "InvalidPermission.Duplicate"
    # Old-version describe shows the rules in that version's namespace.
    status, body = cloud.send_v4({"Action": "DescribeSecurityGroups", "Version": v,
                                  "GroupName.1": web}, creds=creds)
    ns = {"e": ec2_ns(v)}
    root = parse_xml(body)
    protos = [e.text for e in root.findall(
        "./e:securityGroupInfo/e:item/e:ipPermissions/e:item/e:ipProtocol", ns)]
    assert sorted(protos) == ["icmp", "tcp", "tcp", "udp"]
    # Flat revoke of the group rule and the CIDR rule.
    for params in ({"SourceSecurityGroupName": src,
                    "SourceSecurityGroupOwnerId": creds["account_id"]},
                   {"IpProtocol": "tcp", "FromPort": "22", "ToPort": "22",
                    "CidrIp": "0.0.0.0/0"}):
        status, body = cloud.send_v4({"Action": "RevokeSecurityGroupIngress", "Version": v,
                                      "GroupName": web, **params}, creds=creds)
        assert status == 200, body
    assert perms_of(ec2, web_id) == set()
    status, body = cloud.send_v4({
        "Action": "RevokeSecurityGroupIngress", "Version": v, "GroupName": web,
        "IpProtocol": "tcp", "FromPort": "22", "ToPort": "22", "CidrIp": "0.0.0.0/0"},
        creds=creds)
    assert status == 400 and error_code(body) == "InvalidPermission.NotFound"


def test_flat_authorize_via_sigv2(cloud, account):
    creds, ec2 = account
    web = unique("v2flat")
    gid = ec2.create_security_group(GroupName=web, Description="w")["GroupId"]
    status, body = cloud.send_v2({"Action": "AuthorizeSecurityGroupIngress",
                                  "Version": "2010-08-31", "GroupName": web,
                                  "IpProtocol": "udp", "FromPort": "5000",
                                  "ToPort": "5010", "CidrIp": "10.2.0.0/16"}, creds=creds)
    assert status == 200, body
    assert perms_of(ec2, gid) == {("udp", 5000, 5010, "10.2.0.0/16")}


def test_group_filters(account):
    _, ec2 = account
    a, b = unique("fa"), unique("fb")
    a_id = ec2.create_security_group(GroupName=a, Description="alpha")["GroupId"]
    b_id = ec2.create_security_group(GroupName=b, Description="beta")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=a_id, IpPermissions=[tcp(22, 22, "10.9.0.0/16")])
    ec2.authorize_security_group_ingress(GroupId=b_id, IpPermissions=[tcp(443, 443, "0.0.0.0/0")])

    def names(filters):
        return sorted(g["GroupName"] for g in
                      ec2.describe_security_groups(Filters=filters)["SecurityGroups"])

    assert names([{"Name": "group-name", "Values": [a]}]) == [a]
    assert names([{"Name": "group-name", "Values": ["f?-*"]}]) == sorted([a, b])
    assert names([{"Name": "group-name", "Values": [a, b]}]) == sorted([a, b])
    assert names([{"Name": "ip-permission.cidr", "Values": ["10.9.0.0/16"]}]) == [a]
    assert names([{"Name": "ip-permission.cidr", "Values": ["0.0.0.0/0"]}]) == [b]
    assert names([{"Name": "ip-permission.from-port", "Values": ["443"]}]) == [b]
    assert names([{"Name": "description", "Values": ["al*"]}]) == [a]
    assert names([{"Name": "group-id", "Values": [b_id]}]) == [b]
    assert names([{"Name": "group-name", "Values": ["f*"]},
                  {"Name": "ip-permission.cidr", "Values": ["0.0.0.0/0"]}]) == [b]
    assert names([{"Name": "group-name", "Values": ["nothing*"]}]) == []
    with raises_code("InvalidParameterValue"):
        ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": ["x"]}])
    with raises_code("InvalidParameterValue"):
        ec2.describe_security_groups(Filters=[{"Name": "group-nam", "Values": [a]}])


def test_group_lifecycle_cli(cloud):
    creds = cloud.new_account()
    name, src = unique("cliweb"), unique("clisrc")
    gid = cloud.aws("ec2", "create-security-group", "--group-name", name,
                    "--description", "cli group", creds=creds)["GroupId"]
    src_id = cloud.aws("ec2", "create-security-group", "--group-name", src,
                       "--description", "src", creds=creds)["GroupId"]
    cloud.aws("ec2", "authorize-security-group-ingress", "--group-name", name,
              "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8", creds=creds)
    cloud.aws("ec2", "authorize-security-group-ingress", "--group-id", gid,
              "--ip-permissions",
              f'IpProtocol=tcp,FromPort=80,ToPort=81,UserIdGroupPairs=[{{GroupId={src_id}}}]',
              creds=creds)
    cloud.aws("ec2", "authorize-security-group-ingress", "--group-name", name,
              "--protocol", "icmp", "--port", "-1", "--cidr", "0.0.0.0/0", creds=creds)
    assert cloud.aws_error("ec2", "authorize-security-group-ingress", "--group-name", name,
                           "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8",
                           creds=creds) == "InvalidPermission.Duplicate"
    out = cloud.aws("ec2", "describe-security-groups", "--filters",
                    "Name=ip-permission.cidr,Values=10.0.0.0/8", creds=creds)
    assert [g["GroupName"] for g in out["SecurityGroups"]] == [name]
    g = out["SecurityGroups"][0]
    rules = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) for p in g["IpPermissions"]}
    assert rules == {("tcp", 22, 22), ("tcp", 80, 81), ("icmp", -1, -1)}
    assert cloud.aws_error("ec2", "delete-security-group", "--group-name", src,
                           creds=creds) == "InvalidGroup.InUse"
    cloud.aws("ec2", "revoke-security-group-ingress", "--group-id", gid, "--ip-permissions",
              f'IpProtocol=tcp,FromPort=80,ToPort=81,UserIdGroupPairs=[{{GroupId={src_id}}}]',
              creds=creds)
    cloud.aws("ec2", "revoke-security-group-ingress", "--group-name", name,
              "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8", creds=creds)
    assert cloud.aws_error("ec2", "revoke-security-group-ingress", "--group-name", name,
                           "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8",
                           creds=creds) == "InvalidPermission.NotFound"
    cloud.aws("ec2", "delete-security-group", "--group-name", src, creds=creds)
    cloud.aws("ec2", "delete-security-group", "--group-id", gid, creds=creds)
    assert cloud.aws_error("ec2", "describe-security-groups", "--group-names", name,
                           creds=creds) == "InvalidGroup.NotFound"
    assert cloud.aws_error("ec2", "create-security-group", "--group-name", "default",
                           "--description", "x", creds=creds) == "InvalidGroup.Reserved"
    assert cloud.aws_error("ec2", "delete-security-group", "--group-name", "default",
                           creds=creds) == "CannotDelete"
    left = cloud.aws("ec2", "describe-security-groups", creds=creds)["SecurityGroups"]
    assert [g["GroupName"] for g in left] == ["default"]


def test_awkward_characters_round_trip(cloud, account):
    """Names and descriptions with characters that form and signature
    encodings treat specially survive SigV4 (boto3), SigV2 and the CLI."""
    creds, ec2 = account
    desc = "a+b & c=d/e%f ~*'() <x> \"q\""
    n1 = unique("odd") + " +&=%/~*"
    gid = ec2.create_security_group(GroupName=n1, Description=desc)["GroupId"]
    g = ec2.describe_security_groups(GroupNames=[n1])["SecurityGroups"][0]
    assert (g["GroupId"], g["GroupName"], g["Description"]) == (gid, n1, desc)
    n2 = unique("odd") + " v2+&=%"
    status, body = cloud.send_v2({"Action": "CreateSecurityGroup", "GroupName": n2,
                                  "GroupDescription": desc}, creds=creds)
    assert status == 200, body
    assert ec2.describe_security_groups(GroupNames=[n2])["SecurityGroups"][0][
        "Description"] == desc
    n3 = unique("odd") + " cli+&="
    cloud.aws("ec2", "create-security-group", "--group-name", n3, "--description", desc,
              creds=creds)
    out = cloud.aws("ec2", "describe-security-groups", "--group-names", n3, creds=creds)
    assert out["SecurityGroups"][0]["Description"] == desc
