"""`ironbark admin`: accounts, users, access keys and properties, used on
the data dir of a running cloud, and the admin client files it writes."""

import stat
import uuid

from conftest import REGION, creds_of, raises_code, unique


def test_admin_files(cloud):
    d = cloud.admin_dir
    for f in ("credentials", "config", "eucarc"):
        mode = stat.S_IMODE((d / f).stat().st_mode)
        assert mode & 0o077 == 0, f"{f} is mode {oct(mode)}"
    creds = cloud.admin_creds()
    config = (d / "config").read_text()
    assert "[profile ironbark-admin]" in config
    assert f"region = {REGION}" in config
    assert f"endpoint_url = {cloud.endpoint}" in config
    assert "[services ironbark-admin]" in config
    eucarc = dict(
        line[len("export "):].split("=", 1)
        for line in (d / "eucarc").read_text().splitlines() if line.startswith("export "))
    assert eucarc["EC2_URL"] == cloud.endpoint
    assert eucarc["S3_URL"].startswith("http://127.0.0.1:")
    assert eucarc["EC2_ACCESS_KEY"] == eucarc["AWS_ACCESS_KEY_ID"] == creds["access_key_id"]
    assert eucarc["EC2_SECRET_KEY"] == eucarc["AWS_SECRET_ACCESS_KEY"] == \
        creds["secret_access_key"]
    assert eucarc["AWS_DEFAULT_REGION"] == REGION
    # The files' key is the administrator's: it works, and its account is
    # `eucalyptus`.
    accounts = {a["account_name"]: a["account_id"] for a in cloud.admin("account", "list")}
    groups = cloud.client().describe_security_groups()["SecurityGroups"]
    assert {g["OwnerId"] for g in groups} == {accounts["eucalyptus"]}
    assert (stat.S_IMODE((cloud.data_dir / "keys" / "seal.key").stat().st_mode) & 0o077) == 0


def test_account_create_list_delete(cloud):
    name = unique("adm")
    created = cloud.admin("account", "create", name)
    assert set(created) == {"account_id", "account_name", "user_name", "access_key_id",
                            "secret_access_key"}
    assert created["account_name"] == name
    assert created["user_name"] == "admin"
    assert len(created["account_id"]) == 12 and created["account_id"].isdigit()
    listed = cloud.admin("account", "list")
    assert {"account_id": created["account_id"], "account_name": name} in listed
    assert "eucalyptus" in {a["account_name"] for a in listed}

    # The new account works at once against the running server.
    ec2 = cloud.client(creds_of(created))
    gid = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    ec2.create_key_pair(KeyName="k", KeyType="ed25519")
    assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]

    dup = cloud.admin("account", "create", name, check=False)
    assert dup.returncode != 0
    bad = cloud.admin("account", "create", "Bad Name!", check=False)
    assert bad.returncode != 0
    assert [a["account_name"] for a in cloud.admin("account", "list")].count(name) == 1

    assert cloud.admin("account", "delete", name) == {"deleted": name}
    assert name not in {a["account_name"] for a in cloud.admin("account", "list")}
    with raises_code("AuthFailure"):
        ec2.describe_security_groups()
    # Its resources went with it: the administrator's verbose view lacks them.
    admin = cloud.client()
    owners = {g["OwnerId"] for g in
              admin.describe_security_groups(GroupNames=["verbose"])["SecurityGroups"]}
    assert created["account_id"] not in owners
    assert cloud.admin("account", "delete", name, check=False).returncode != 0
    assert cloud.admin("account", "delete", "eucalyptus", check=False).returncode != 0
    cloud.client().describe_regions()


def test_users_and_access_keys(cloud):
    acct = cloud.new_account("keys")
    name = acct["account_name"]
    user = cloud.admin("user", "create", "--account", name, "alice")
    assert user == {"account_id": acct["account_id"], "user_name": "alice"}
    users = {u["user_name"] for u in cloud.admin("user", "list", "--account", name)}
    assert users == {"admin", "alice"}
    assert cloud.admin("user", "create", "--account", name, "alice",
                       check=False).returncode != 0

    issued = cloud.admin("access-key", "create", "--account", name, "--user", "alice")
    assert issued["user_name"] == "alice"
    assert issued["account_id"] == acct["account_id"]
    assert len(issued["secret_access_key"]) >= 40
    # A user's key acts in its account.
    alice = cloud.client(creds_of(issued))
    gid = alice.create_security_group(GroupName="shared", Description="d")["GroupId"]
    owner = cloud.client(creds_of(acct))
    assert owner.describe_security_groups(GroupNames=["shared"])["SecurityGroups"][0][
        "GroupId"] == gid

    # Import an existing id/secret pair.
    imp_id = "AKIA" + uuid.uuid4().hex.upper()[:16]
    imp_secret = "Imported/Secret+Key0123456789abcdefghijkl"
    imported = cloud.admin("access-key", "create", "--account", name,
                           "--id", imp_id, "--secret", imp_secret)
    assert imported["access_key_id"] == imp_id
    assert imported["secret_access_key"] == imp_secret
    via_import = cloud.client({"access_key_id": imp_id, "secret_access_key": imp_secret})
    assert [g["GroupId"] for g in via_import.describe_security_groups(
        GroupNames=["shared"])["SecurityGroups"]] == [gid]
    # The same id again is refused.
    assert cloud.admin("access-key", "create", "--account", name, "--id", imp_id,
                       "--secret", imp_secret, check=False).returncode != 0

    keys = cloud.admin("access-key", "list", "--account", name)
    ids = {k["access_key_id"]: k for k in keys}
    assert set(ids) == {acct["access_key_id"], issued["access_key_id"], imp_id}
    assert ids[issued["access_key_id"]]["user_name"] == "alice"
    assert all(k["status"] == "Active" for k in keys)
    listing = str(keys)
    for secret in (acct["secret_access_key"], issued["secret_access_key"], imp_secret):
        assert secret not in listing

    assert cloud.admin("access-key", "delete", imp_id) == {"deleted": imp_id}
    with raises_code("AuthFailure"):
        via_import.describe_regions()
    cloud.admin("access-key", "delete", issued["access_key_id"])
    with raises_code("AuthFailure"):
        alice.describe_regions()
    # The account's other key is untouched.
    assert owner.describe_regions()["Regions"]
    assert {k["access_key_id"] for k in cloud.admin("access-key", "list", "--account", name)} \
        == {acct["access_key_id"]}
    assert cloud.admin("access-key", "delete", imp_id, check=False).returncode != 0


def test_properties(cloud):
    name = "bb." + unique("prop").replace("-", "")
    assert cloud.admin("property", "set", name, "some value") == {name: "some value"}
    assert cloud.admin("property", "list")[name] == "some value"
    cloud.admin("property", "set", name, "other")
    assert cloud.admin("property", "list")[name] == "other"
