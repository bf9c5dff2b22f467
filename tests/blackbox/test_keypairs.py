"""Key pairs: create (RSA, ed25519), import, describe, delete; EC2's
fingerprints checked against openssl and ssh-keygen; errors and filters."""

import base64
import hashlib
import os

from conftest import openssl_digest_hex, raises_code, run, unique


def write_private(path, text):
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def ssh_keygen(tmp, kind):
    key = tmp / f"id_{kind}"
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "bb@test", "-f", str(key)]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    run(args)
    return key, key.with_suffix(".pub")


def sha256_fingerprint_of(pub):
    """`ssh-keygen -l -E sha256` minus its prefix, with base64 '=' padding."""
    out = run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)]).stdout.decode()
    b64 = out.split()[1].split(":", 1)[1]
    return b64 + "=" * (-len(b64) % 4)


def test_create_rsa_fingerprint_and_private_key(account, tmp):
    _, ec2 = account
    name = unique("rsa")
    kp = ec2.create_key_pair(KeyName=name)
    assert kp["KeyName"] == name
    assert kp["KeyPairId"].startswith("key-")
    pem = write_private(tmp / "k.pem", kp["KeyMaterial"])
    assert "PRIVATE KEY-----" in kp["KeyMaterial"]
    # EC2: SHA-1 of the DER PKCS#8 form of the private key.
    der = run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-outform", "DER",
               "-in", str(pem)]).stdout
    expected = openssl_digest_hex(run(["openssl", "sha1", "-c"], input=der).stdout)
    assert kp["KeyFingerprint"] == expected
    assert kp["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())
    # The private key is a working RSA key for ssh.
    pub = run(["ssh-keygen", "-y", "-f", str(pem)]).stdout.decode()
    assert pub.startswith("ssh-rsa ")
    described = ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
    assert described["KeyFingerprint"] == expected
    assert described["KeyPairId"] == kp["KeyPairId"]
    assert described["KeyType"] == "rsa"
    assert "KeyMaterial" not in described


def test_create_ed25519(account, tmp):
    _, ec2 = account
    name = unique("ed")
    kp = ec2.create_key_pair(KeyName=name, KeyType="ed25519")
    pem = write_private(tmp / "ed.pem", kp["KeyMaterial"])
    pub = tmp / "ed.pub"
    pub.write_bytes(run(["ssh-keygen", "-y", "-f", str(pem)]).stdout)
    assert pub.read_text().startswith("ssh-ed25519 ")
    assert kp["KeyFingerprint"] == sha256_fingerprint_of(pub)
    assert ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]["KeyType"] == "ed25519"


def test_import_rsa_fingerprint_is_md5_of_spki(account, tmp):
    _, ec2 = account
    _, pub = ssh_keygen(tmp, "rsa")
    name = unique("imprsa")
    imp = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=pub.read_bytes())
    pkcs8 = run(["ssh-keygen", "-e", "-m", "PKCS8", "-f", str(pub)]).stdout
    spki = run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pkcs8).stdout
    expected = openssl_digest_hex(run(["openssl", "md5", "-c"], input=spki).stdout)
    assert imp["KeyFingerprint"] == expected
    assert imp["KeyName"] == name
    kp = ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
    assert kp["KeyFingerprint"] == expected
    assert kp["KeyType"] == "rsa"


def test_import_ed25519_fingerprint_is_base64_sha256(account, tmp):
    _, ec2 = account
    _, pub = ssh_keygen(tmp, "ed25519")
    name = unique("imped")
    imp = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=pub.read_bytes())
    expected = sha256_fingerprint_of(pub)
    assert imp["KeyFingerprint"] == expected
    assert imp["KeyFingerprint"].endswith("=")
    # Cross-check by hand: sha256 of the wire-format key blob.
    blob = base64.b64decode(pub.read_text().split()[1])
    assert expected == base64.b64encode(hashlib.sha256(blob).digest()).decode()


def test_keypair_lifecycle_cli(cloud, tmp):
    creds = cloud.new_account()
    name = unique("clik")
    created = cloud.aws("ec2", "create-key-pair", "--key-name", name, creds=creds)
    assert created["KeyName"] == name
    assert "PRIVATE KEY" in created["KeyMaterial"]
    _, pub = ssh_keygen(tmp, "ed25519")
    imported_name = unique("clii")
    imp = cloud.aws("ec2", "import-key-pair", "--key-name", imported_name,
                    "--public-key-material", f"fileb://{pub}", creds=creds)
    assert imp["KeyFingerprint"] == sha256_fingerprint_of(pub)
    listed = cloud.aws("ec2", "describe-key-pairs", creds=creds)["KeyPairs"]
    assert sorted(k["KeyName"] for k in listed) == sorted([name, imported_name])
    cloud.aws("ec2", "delete-key-pair", "--key-name", name, creds=creds)
    listed = cloud.aws("ec2", "describe-key-pairs", creds=creds)["KeyPairs"]
    assert [k["KeyName"] for k in listed] == [imported_name]
    assert cloud.aws_error("ec2", "describe-key-pairs", "--key-names", name,
                           creds=creds) == "InvalidKeyPair.NotFound"
    assert cloud.aws_error("ec2", "import-key-pair", "--key-name", imported_name,
                           "--public-key-material", f"fileb://{pub}",
                           creds=creds) == "InvalidKeyPair.Duplicate"


def test_keypair_errors_change_nothing(account, tmp):
    _, ec2 = account
    name = unique("dup")
    first = ec2.create_key_pair(KeyName=name)
    with raises_code("InvalidKeyPair.Duplicate"):
        ec2.create_key_pair(KeyName=name)
    _, pub = ssh_keygen(tmp, "ed25519")
    with raises_code("InvalidKeyPair.Duplicate"):
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=pub.read_bytes())
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.describe_key_pairs(KeyNames=[unique("nokey")])
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.describe_key_pairs(KeyNames=[name, unique("nokey")])
    bad_name = unique("bad")
    for material in (b"not a key at all", b"ssh-rsa AAAAB3NzaC1yc2E= x",
                     b"ssh-ed25519 AAAA"):
        with raises_code("InvalidKey.Format"):
            ec2.import_key_pair(KeyName=bad_name, PublicKeyMaterial=material)
    with raises_code("InvalidParameterValue"):
        ec2.create_key_pair(KeyName=bad_name, KeyType="dsa")
    keys = ec2.describe_key_pairs()["KeyPairs"]
    assert [(k["KeyName"], k["KeyFingerprint"]) for k in keys] == \
        [(name, first["KeyFingerprint"])]


def test_delete_key_pair(account):
    _, ec2 = account
    a, b = unique("dela"), unique("delb")
    ec2.create_key_pair(KeyName=a, KeyType="ed25519")
    kb = ec2.create_key_pair(KeyName=b, KeyType="ed25519")
    # Deleting a key that is not there succeeds, as in EC2, and changes nothing.
    ec2.delete_key_pair(KeyName=unique("ghost"))
    assert len(ec2.describe_key_pairs()["KeyPairs"]) == 2
    ec2.delete_key_pair(KeyName=a)
    ec2.delete_key_pair(KeyPairId=kb["KeyPairId"])
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    # A deleted name can be used again.
    ec2.create_key_pair(KeyName=a, KeyType="ed25519")
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == [a]


def test_keypair_filters(account):
    _, ec2 = account
    web1, web2, db = unique("web"), unique("web"), unique("db")
    k1 = ec2.create_key_pair(KeyName=web1, KeyType="ed25519")
    ec2.create_key_pair(KeyName=web2, KeyType="ed25519")
    ec2.create_key_pair(KeyName=db)

    def names(filters):
        return sorted(k["KeyName"] for k in
                      ec2.describe_key_pairs(Filters=filters)["KeyPairs"])

    assert names([{"Name": "key-name", "Values": ["web-*"]}]) == sorted([web1, web2])
    assert names([{"Name": "key-name", "Values": [db, web1]}]) == sorted([db, web1])
    assert names([{"Name": "fingerprint", "Values": ["*"]}]) == sorted([web1, web2, db])
    assert names([{"Name": "fingerprint", "Values": [k1["KeyFingerprint"]]}]) == [web1]
    assert names([{"Name": "key-type", "Values": ["rsa"]}]) == [db]
    assert names([{"Name": "key-name", "Values": ["web-*"]},
                  {"Name": "key-type", "Values": ["rsa"]}]) == []
    assert names([{"Name": "key-pair-id", "Values": [k1["KeyPairId"]]}]) == [web1]
    with raises_code("InvalidParameterValue"):
        ec2.describe_key_pairs(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    described = ec2.describe_key_pairs(KeyPairIds=[k1["KeyPairId"]])["KeyPairs"]
    assert [k["KeyName"] for k in described] == [web1]
    with raises_code("InvalidKeyPair.NotFound"):
        ec2.describe_key_pairs(KeyPairIds=["key-0123456789abcdef0"])
