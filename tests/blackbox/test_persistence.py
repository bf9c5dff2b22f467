"""State survives a graceful stop (SIGTERM) and a kill -9; the admin files
are kept; and no secret is ever written to the state database in clear."""

import uuid

from conftest import creds_of, raises_code


def state_bytes(cloud) -> bytes:
    files = sorted((cloud.data_dir / "state").glob("clc.db*"))
    assert any(f.name == "clc.db" for f in files), files
    return b"".join(f.read_bytes() for f in files)


def build_state(cloud):
    """An account with a user, an imported key, key pairs, groups, rules
    (CIDR and source group) and tags; returns what to look for."""
    acct = cloud.new_account("persist")
    name = acct["account_name"]
    cloud.admin("user", "create", "--account", name, "bob")
    bob = cloud.admin("access-key", "create", "--account", name, "--user", "bob")
    imp = {"access_key_id": "AKIA" + uuid.uuid4().hex.upper()[:16],
           "secret_access_key": "persisted-secret-" + uuid.uuid4().hex}
    cloud.admin("access-key", "create", "--account", name,
                "--id", imp["access_key_id"], "--secret", imp["secret_access_key"])
    ec2 = cloud.client(creds_of(acct))
    rsa = ec2.create_key_pair(KeyName="rsa-key")
    ed = ec2.create_key_pair(KeyName="ed-key", KeyType="ed25519")
    web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "icmp", "FromPort": 3, "ToPort": 4,
         "IpRanges": [{"CidrIp": "192.168.0.0/16"}]}])
    ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "UserIdGroupPairs": [{"GroupId": web}]}])
    ec2.create_tags(Resources=[web, rsa["KeyPairId"]], Tags=[{"Key": "tier", "Value": "front"}])
    return dict(acct=acct, bob=bob, imp=imp, private_keys=[rsa["KeyMaterial"],
                                                            ed["KeyMaterial"]],
                expected=observe(cloud, acct))


def observe(cloud, acct):
    """Everything the account and the admin can see, in a comparable form."""
    ec2 = cloud.client(creds_of(acct))
    groups = sorted(
        (g["GroupId"], g["GroupName"], g["Description"], g["OwnerId"],
         sorted(str(p) for p in g["IpPermissions"]),
         sorted((t["Key"], t["Value"]) for t in g["Tags"]))
        for g in ec2.describe_security_groups()["SecurityGroups"])
    keys = sorted((k["KeyPairId"], k["KeyName"], k["KeyFingerprint"], k["KeyType"],
                   sorted((t["Key"], t["Value"]) for t in k.get("Tags", [])))
                  for k in ec2.describe_key_pairs()["KeyPairs"])
    tags = sorted((t["ResourceId"], t["Key"], t["Value"]) for t in ec2.describe_tags()["Tags"])
    accounts = sorted((a["account_id"], a["account_name"]) for a in cloud.admin("account", "list"))
    access = sorted(k["access_key_id"] for k in
                    cloud.admin("access-key", "list", "--account", acct["account_name"]))
    users = sorted(u["user_name"] for u in
                   cloud.admin("user", "list", "--account", acct["account_name"]))
    return dict(groups=groups, keys=keys, tags=tags, accounts=accounts, access=access,
                users=users)


def check_all_keys_work(cloud, st):
    for creds in (st["acct"], st["bob"], st["imp"]):
        groups = cloud.client(creds_of(creds)).describe_security_groups(
            GroupNames=["web"])["SecurityGroups"]
        assert groups[0]["OwnerId"] == st["acct"]["account_id"]
    assert cloud.client().describe_regions()["Regions"]


def test_restart_after_sigterm_and_kill9(fresh_cloud):
    cloud = fresh_cloud
    admin_files = {f: (cloud.admin_dir / f).read_bytes()
                   for f in ("credentials", "config", "eucarc")}
    st = build_state(cloud)
    check_all_keys_work(cloud, st)

    rc = cloud.stop()
    assert rc == 0, f"SIGTERM exit code {rc}\n{cloud.log_tail()}"
    # The admin tool works on the data dir with the server down.
    later = cloud.new_account("offline")
    cloud.start(port=cloud.port)
    st["expected"]["accounts"] = sorted(st["expected"]["accounts"] +
                                        [(later["account_id"], later["account_name"])])
    assert observe(cloud, st["acct"]) == st["expected"]
    check_all_keys_work(cloud, st)
    assert cloud.client(creds_of(later)).describe_key_pairs()["KeyPairs"] == []
    assert (cloud.admin_dir / "credentials").read_bytes() == admin_files["credentials"]
    if cloud.port_was_reused:
        assert (cloud.admin_dir / "config").read_bytes() == admin_files["config"]
        assert (cloud.admin_dir / "eucarc").read_bytes() == admin_files["eucarc"]
    # The admin CLI still works from the (rewritten) files, no --endpoint-url.
    assert cloud.aws("ec2", "describe-regions")["Regions"][0]["Endpoint"] == cloud.endpoint

    # Changes made after the restart, then a hard kill.
    ec2 = cloud.client(creds_of(st["acct"]))
    ec2.create_tags(Resources=[st["expected"]["groups"][0][0]],
                    Tags=[{"Key": "after", "Value": "kill"}])
    ec2.delete_key_pair(KeyName="ed-key")
    cloud.admin("access-key", "delete", st["bob"]["access_key_id"])
    expected = observe(cloud, st["acct"])
    cloud.kill9()
    cloud.start(port=cloud.port)
    assert observe(cloud, st["acct"]) == expected
    assert (cloud.admin_dir / "credentials").read_bytes() == admin_files["credentials"]
    with raises_code("AuthFailure"):
        cloud.client(creds_of(st["bob"])).describe_regions()
    assert cloud.client(creds_of(st["imp"])).describe_key_pairs(
        KeyNames=["rsa-key"])["KeyPairs"]
    assert cloud.aws("ec2", "describe-key-pairs", "--key-names", "verbose")["KeyPairs"]


def test_no_secret_in_state_db(fresh_cloud):
    cloud = fresh_cloud
    st = build_state(cloud)
    secrets = [cloud.admin_creds()["secret_access_key"], st["acct"]["secret_access_key"],
               st["bob"]["secret_access_key"], st["imp"]["secret_access_key"]]
    # Body lines of the created private keys: never stored at all.
    pem_lines = [ln for pk in st["private_keys"] for ln in pk.splitlines()
                 if ln and not ln.startswith("-----")][:6]

    def check(blob):
        for s in secrets:
            assert s.encode() not in blob, "a secret access key is in the db in clear"
        for ln in pem_lines:
            assert ln.encode() not in blob, "private key material is in the db"
        # The access key ids are there (the db is not just empty).
        assert st["acct"]["access_key_id"].encode() in blob

    check(state_bytes(cloud))  # live, with the WAL
    cloud.stop()
    check(state_bytes(cloud))  # after the checkpoint at shutdown
    cloud.start(port=cloud.port)
    check_all_keys_work(cloud, st)
