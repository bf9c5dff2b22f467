"""Tags on security groups and key pairs: create, describe, delete, the
tag filters of each Describe call, limits and bad ids."""

from conftest import raises_code, unique


def tags_of(ec2, rid):
    out = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [rid]}])["Tags"]
    return {t["Key"]: t["Value"] for t in out}


def test_tags_on_groups_and_key_pairs_boto3(account):
    _, ec2 = account
    g = unique("tg")
    gid = ec2.create_security_group(GroupName=g, Description="d")["GroupId"]
    kid = ec2.create_key_pair(KeyName=unique("tk"), KeyType="ed25519")["KeyPairId"]
    ec2.create_tags(Resources=[gid, kid], Tags=[{"Key": "env", "Value": "prod"},
                                                {"Key": "Name", "Value": "thing"}])
    ec2.create_tags(Resources=[kid], Tags=[{"Key": "empty", "Value": ""}])
    assert tags_of(ec2, gid) == {"env": "prod", "Name": "thing"}
    assert tags_of(ec2, kid) == {"env": "prod", "Name": "thing", "empty": ""}
    everything = ec2.describe_tags()["Tags"]
    assert {(t["ResourceId"], t["ResourceType"]) for t in everything} == {
        (gid, "security-group"), (kid, "key-pair")}

    # Tags show up in the resources' own Describe output.
    sg = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert {t["Key"]: t["Value"] for t in sg["Tags"]} == {"env": "prod", "Name": "thing"}
    kp = ec2.describe_key_pairs(KeyPairIds=[kid])["KeyPairs"][0]
    assert {t["Key"]: t["Value"] for t in kp["Tags"]}["empty"] == ""

    # Overwriting a key replaces its value.
    ec2.create_tags(Resources=[gid], Tags=[{"Key": "env", "Value": "dev"}])
    assert tags_of(ec2, gid)["env"] == "dev"

    # tag:Key filters on the resources' Describe calls.
    got = ec2.describe_security_groups(
        Filters=[{"Name": "tag:env", "Values": ["dev"]}])["SecurityGroups"]
    assert [x["GroupId"] for x in got] == [gid]
    got = ec2.describe_security_groups(
        Filters=[{"Name": "tag:env", "Values": ["prod"]}])["SecurityGroups"]
    assert got == []
    got = ec2.describe_key_pairs(Filters=[{"Name": "tag:env", "Values": ["p*"]}])["KeyPairs"]
    assert [x["KeyPairId"] for x in got] == [kid]
    got = ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": ["empty"]}])["KeyPairs"]
    assert [x["KeyPairId"] for x in got] == [kid]

    # DescribeTags filters.
    by_key = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["Name"]}])["Tags"]
    assert sorted(t["ResourceId"] for t in by_key) == sorted([gid, kid])
    by_type = ec2.describe_tags(Filters=[{"Name": "resource-type",
                                          "Values": ["key-pair"]}])["Tags"]
    assert {t["ResourceId"] for t in by_type} == {kid}
    by_value = ec2.describe_tags(Filters=[{"Name": "value", "Values": ["dev"]}])["Tags"]
    assert [(t["ResourceId"], t["Key"]) for t in by_value] == [(gid, "env")]
    with raises_code("InvalidParameterValue"):
        ec2.describe_tags(Filters=[{"Name": "colour", "Values": ["x"]}])

    # DeleteTags: by key, by key and (non-matching / matching) value.
    ec2.delete_tags(Resources=[gid], Tags=[{"Key": "Name"}])
    ec2.delete_tags(Resources=[gid], Tags=[{"Key": "env", "Value": "not-dev"}])
    assert tags_of(ec2, gid) == {"env": "dev"}
    ec2.delete_tags(Resources=[gid], Tags=[{"Key": "env", "Value": "dev"}])
    assert tags_of(ec2, gid) == {}
    # Without Tags: every tag of the resource.
    ec2.delete_tags(Resources=[kid])
    assert ec2.describe_tags()["Tags"] == []


def test_unicode_and_awkward_tags(account):
    _, ec2 = account
    gid = ec2.create_security_group(GroupName=unique("uni"), Description="d")["GroupId"]
    tags = {"Ünïcødé ✓": "välue/+= &% <>", "plain": "ends with space ", "x" * 128: "v" * 256}
    ec2.create_tags(Resources=[gid], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    assert tags_of(ec2, gid) == tags
    got = ec2.describe_security_groups(
        Filters=[{"Name": "tag:Ünïcødé ✓", "Values": ["välue*"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in got] == [gid]
    with raises_code("InvalidParameterValue"):
        ec2.create_tags(Resources=[gid], Tags=[{"Key": "k", "Value": "v" * 257}])
    assert tags_of(ec2, gid) == tags


def test_tag_errors_change_nothing(account):
    _, ec2 = account
    gid = ec2.create_security_group(GroupName=unique("tl"), Description="d")["GroupId"]
    ec2.create_tags(Resources=[gid], Tags=[{"Key": f"k{i}", "Value": str(i)} for i in range(50)])
    assert len(tags_of(ec2, gid)) == 50
    with raises_code("TagLimitExceeded"):
        ec2.create_tags(Resources=[gid], Tags=[{"Key": "one-more", "Value": "x"}])
    # Overwriting existing keys stays within the limit.
    ec2.create_tags(Resources=[gid], Tags=[{"Key": "k0", "Value": "zero"}])
    tags = tags_of(ec2, gid)
    assert len(tags) == 50 and tags["k0"] == "zero" and "one-more" not in tags

    other = ec2.create_security_group(GroupName=unique("tl"), Description="d")["GroupId"]
    with raises_code("TagLimitExceeded"):
        ec2.create_tags(Resources=[other],
                        Tags=[{"Key": f"x{i}", "Value": "v"} for i in range(51)])
    assert tags_of(ec2, other) == {}

    for bad in ("i-xyz", "bogus", "vpc-1234abcd", "sg-xyz", "vol-xyz"):
        with raises_code("InvalidID"):
            ec2.create_tags(Resources=[bad], Tags=[{"Key": "a", "Value": "b"}])
    # A well-formed id of nothing.
    with raises_code("InvalidGroup.NotFound"):
        ec2.create_tags(Resources=["sg-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}])
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.create_tags(Resources=["key-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}])
    with raises_code("InvalidVolume.NotFound"):
        ec2.create_tags(Resources=["vol-1234abcd"], Tags=[{"Key": "a", "Value": "b"}])
    with raises_code("InvalidSnapshot.NotFound"):
        ec2.create_tags(Resources=["snap-1234abcd"], Tags=[{"Key": "a", "Value": "b"}])
    with raises_code("InvalidInstanceID.NotFound"):
        ec2.create_tags(Resources=["i-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}])
    # One bad resource in a list: none of them is tagged.
    with raises_code("InvalidID"):
        ec2.create_tags(Resources=[other, "bogus-1"], Tags=[{"Key": "a", "Value": "b"}])
    with raises_code("InvalidParameterValue"):
        ec2.create_tags(Resources=[other], Tags=[{"Key": "aws:reserved", "Value": "b"}])
    with raises_code("InvalidParameterValue"):
        ec2.create_tags(Resources=[other], Tags=[{"Key": "k" * 129, "Value": "b"}])
    assert tags_of(ec2, other) == {}
    assert len(tags_of(ec2, gid)) == 50


def test_tags_cli(cloud):
    creds = cloud.new_account()
    name = unique("clitag")
    gid = cloud.aws("ec2", "create-security-group", "--group-name", name,
                    "--description", "d", creds=creds)["GroupId"]
    kid = cloud.aws("ec2", "create-key-pair", "--key-name", name, "--key-type", "ed25519",
                    creds=creds)["KeyPairId"]
    cloud.aws("ec2", "create-tags", "--resources", gid, kid,
              "--tags", "Key=team,Value=blue", "Key=cost,Value=42", creds=creds)
    out = cloud.aws("ec2", "describe-tags", "--filters", "Name=key,Values=team",
                    creds=creds)["Tags"]
    assert sorted((t["ResourceId"], t["Value"]) for t in out) == sorted([(gid, "blue"),
                                                                         (kid, "blue")])
    out = cloud.aws("ec2", "describe-security-groups", "--filters",
                    "Name=tag:team,Values=blue", creds=creds)["SecurityGroups"]
    assert [g["GroupId"] for g in out] == [gid]
    out = cloud.aws("ec2", "describe-key-pairs", "--filters", "Name=tag:cost,Values=4*",
                    creds=creds)["KeyPairs"]
    assert [k["KeyPairId"] for k in out] == [kid]
    cloud.aws("ec2", "delete-tags", "--resources", gid, "--tags", "Key=team", creds=creds)
    out = cloud.aws("ec2", "describe-tags", creds=creds)["Tags"]
    assert sorted((t["ResourceId"], t["Key"]) for t in out) == sorted(
        [(gid, "cost"), (kid, "team"), (kid, "cost")])
    assert cloud.aws_error("ec2", "create-tags", "--resources", "ami-12345678",
                           "--tags", "Key=a,Value=b", creds=creds) == "InvalidID"
