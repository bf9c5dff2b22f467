"""Two accounts never see or touch each other's groups, key pairs or tags;
only the administrator's `verbose` views cross accounts."""

import pytest

from conftest import creds_of, error_code, raises_code, unique


@pytest.fixture
def two(cloud):
    """Accounts A and B, each with a tagged group (with a rule) and a key pair."""
    out = []
    for who in ("a", "b"):
        creds = cloud.new_account(f"iso{who}")
        ec2 = cloud.client(creds_of(creds))
        gname, kname = unique(f"g{who}"), unique(f"k{who}")
        gid = ec2.create_security_group(GroupName=gname, Description=who)["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
        kp = ec2.create_key_pair(KeyName=kname, KeyType="ed25519")
        ec2.create_tags(Resources=[gid, kp["KeyPairId"]],
                        Tags=[{"Key": "owner", "Value": who}])
        out.append(dict(creds=creds, ec2=ec2, gname=gname, gid=gid, kname=kname,
                        kid=kp["KeyPairId"], fp=kp["KeyFingerprint"]))
    return out


def snapshot(x):
    ec2 = x["ec2"]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    keys = ec2.describe_key_pairs()["KeyPairs"]
    tags = ec2.describe_tags()["Tags"]
    return (sorted((g["GroupId"], g["GroupName"], str(g["IpPermissions"]), str(g["Tags"]))
                   for g in groups),
            sorted((k["KeyPairId"], k["KeyName"], k["KeyFingerprint"]) for k in keys),
            sorted((t["ResourceId"], t["Key"], t["Value"]) for t in tags))


def test_describe_lists_only_own(two):
    a, b = two
    for me, other in ((a, b), (b, a)):
        groups = me["ec2"].describe_security_groups()["SecurityGroups"]
        assert {g["GroupName"] for g in groups} == {"default", me["gname"]}
        assert {g["OwnerId"] for g in groups} == {me["creds"]["account_id"]}
        keys = me["ec2"].describe_key_pairs()["KeyPairs"]
        assert [k["KeyName"] for k in keys] == [me["kname"]]
        tags = me["ec2"].describe_tags()["Tags"]
        assert {t["ResourceId"] for t in tags} == {me["gid"], me["kid"]}
        # Even filters that name the other's things find nothing.
        f = me["ec2"].describe_security_groups(Filters=[
            {"Name": "owner-id", "Values": [other["creds"]["account_id"]]}])
        assert f["SecurityGroups"] == []
        f = me["ec2"].describe_security_groups(Filters=[
            {"Name": "group-name", "Values": [other["gname"]]}])
        assert f["SecurityGroups"] == []
        f = me["ec2"].describe_key_pairs(Filters=[
            {"Name": "fingerprint", "Values": [other["fp"]]}])
        assert f["KeyPairs"] == []
        f = me["ec2"].describe_tags(Filters=[
            {"Name": "resource-id", "Values": [other["gid"], other["kid"]]}])
        assert f["Tags"] == []


def test_b_cannot_touch_a(two):
    a, b = two
    before = snapshot(a)
    ec2 = b["ec2"]
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupNames=[a["gname"]])
    with raises_code("InvalidGroup.NotFound"):
        ec2.describe_security_groups(GroupIds=[a["gid"]])
    with raises_code("InvalidGroup.NotFound"):
        ec2.delete_security_group(GroupName=a["gname"])
    with raises_code("InvalidGroup.NotFound"):
        ec2.delete_security_group(GroupId=a["gid"])
    perm = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    with raises_code("InvalidGroup.NotFound"):
        ec2.authorize_security_group_ingress(GroupId=a["gid"], IpPermissions=perm)
    with raises_code("InvalidGroup.NotFound"):
        ec2.authorize_security_group_ingress(GroupName=a["gname"], IpPermissions=perm)
    a_rule = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
               "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
    with raises_code("InvalidGroup.NotFound"):
        ec2.revoke_security_group_ingress(GroupId=a["gid"], IpPermissions=a_rule)
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.describe_key_pairs(KeyNames=[a["kname"]])
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.describe_key_pairs(KeyPairIds=[a["kid"]])
    # Deleting another's key "succeeds" (nothing of B's by that name) but
    # A's key stays.
    ec2.delete_key_pair(KeyName=a["kname"])
    ec2.delete_key_pair(KeyPairId=a["kid"])
    with raises_code("InvalidGroup.NotFound"):
        ec2.create_tags(Resources=[a["gid"]], Tags=[{"Key": "owner", "Value": "b"}])
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.create_tags(Resources=[a["kid"]], Tags=[{"Key": "owner", "Value": "b"}])
    with raises_code("InvalidGroup.NotFound"):
        ec2.delete_tags(Resources=[a["gid"], a["kid"]], Tags=[{"Key": "owner"}])
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.delete_tags(Resources=[a["kid"]])
    assert snapshot(a) == before


def test_b_may_reuse_a_names(two):
    a, b = two
    ec2 = b["ec2"]
    gid = ec2.create_security_group(GroupName=a["gname"], Description="mine")["GroupId"]
    assert gid != a["gid"]
    kp = ec2.create_key_pair(KeyName=a["kname"], KeyType="ed25519")
    assert kp["KeyPairId"] != a["kid"]
    assert a["ec2"].describe_security_groups(
        GroupNames=[a["gname"]])["SecurityGroups"][0]["Description"] == "a"
    assert a["ec2"].describe_key_pairs(
        KeyNames=[a["kname"]])["KeyPairs"][0]["KeyPairId"] == a["kid"]


def test_admin_verbose_sees_every_account(cloud, two):
    a, b = two
    out = cloud.aws("ec2", "describe-security-groups", "--group-names", "verbose")
    seen = {(g["OwnerId"], g["GroupName"]) for g in out["SecurityGroups"]}
    for x in (a, b):
        assert (x["creds"]["account_id"], x["gname"]) in seen
        assert (x["creds"]["account_id"], "default") in seen
    keys = cloud.aws("ec2", "describe-key-pairs", "--key-names", "verbose")["KeyPairs"]
    ids = {k["KeyPairId"] for k in keys}
    assert {a["kid"], b["kid"]} <= ids
    # boto3, with a filter on top of verbose.
    admin = cloud.client()
    got = admin.describe_security_groups(GroupNames=["verbose"], Filters=[
        {"Name": "owner-id", "Values": [b["creds"]["account_id"]]}])["SecurityGroups"]
    assert {g["GroupName"] for g in got} == {"default", b["gname"]}
    got = admin.describe_key_pairs(KeyNames=["verbose"], Filters=[
        {"Name": "tag:owner", "Values": ["a"]}])["KeyPairs"]
    assert a["kid"] in {k["KeyPairId"] for k in got}
    assert b["kid"] not in {k["KeyPairId"] for k in got}
    # Without verbose the administrator sees only its own account.
    own = admin.describe_security_groups()["SecurityGroups"]
    assert not {g["GroupId"] for g in own} & {a["gid"], b["gid"]}
    own_keys = admin.describe_key_pairs()["KeyPairs"]
    assert not {k["KeyPairId"] for k in own_keys} & {a["kid"], b["kid"]}


def test_normal_user_verbose_sees_nothing_foreign(cloud, two):
    a, b = two
    with raises_code("InvalidGroup.NotFound"):
        b["ec2"].describe_security_groups(GroupNames=["verbose"])
    with raises_code("InvalidKeyPair.NotFound"):
        b["ec2"].describe_key_pairs(KeyNames=["verbose"])
    assert cloud.aws_error("ec2", "describe-security-groups", "--group-names", "verbose",
                           creds=b["creds"]) == "InvalidGroup.NotFound"
    assert cloud.aws_error("ec2", "describe-key-pairs", "--key-names", "verbose",
                           creds=b["creds"]) == "InvalidKeyPair.NotFound"


def test_cross_account_source_group(cloud, two):
    """EC2-Classic lets A admit B's group by owner id and name; B cannot then
    delete that group, nor can B's account be deleted, until A revokes."""
    a, b = two
    params = {"Action": "AuthorizeSecurityGroupIngress", "Version": "2010-08-31",
              "GroupName": a["gname"], "SourceSecurityGroupName": b["gname"],
              "SourceSecurityGroupOwnerId": b["creds"]["account_id"]}
    status, body = cloud.send_v4(params, creds=a["creds"])
    assert status == 200, body
    g = a["ec2"].describe_security_groups(GroupIds=[a["gid"]])["SecurityGroups"][0]
    pairs = [u for p in g["IpPermissions"] for u in p["UserIdGroupPairs"]]
    assert len(pairs) == 3
    assert {(u["UserId"], u["GroupId"]) for u in pairs} == {(b["creds"]["account_id"], b["gid"])}
    # B still does not see A's group, and its own group is in use.
    assert {x["GroupId"] for x in b["ec2"].describe_security_groups()["SecurityGroups"]} \
        >= {b["gid"]}
    assert a["gid"] not in {x["GroupId"] for x in
                            b["ec2"].describe_security_groups()["SecurityGroups"]}
    with raises_code("InvalidGroup.InUse"):
        b["ec2"].delete_security_group(GroupId=b["gid"])
    res = cloud.admin("account", "delete", b["creds"]["account_name"], check=False)
    assert res.returncode != 0 and "DeleteConflict" in res.stderr
    assert b["ec2"].describe_security_groups(GroupIds=[b["gid"]])["SecurityGroups"]
    # A source group of B's that does not exist is not found.
    status, body = cloud.send_v4(dict(params, SourceSecurityGroupName=unique("nope")),
                                 creds=a["creds"])
    assert status == 400 and error_code(body) == "InvalidGroup.NotFound"
    params["Action"] = "RevokeSecurityGroupIngress"
    status, body = cloud.send_v4(params, creds=a["creds"])
    assert status == 200, body
    b["ec2"].delete_security_group(GroupId=b["gid"])
    assert cloud.admin("account", "delete", b["creds"]["account_name"])
