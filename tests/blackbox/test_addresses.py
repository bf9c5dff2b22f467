"""Elastic IPs through the API: AllocateAddress, DescribeAddresses,
ReleaseAddress and the error codes of Associate/Disassociate, with the
real AWS CLI and boto3 against a cloud whose VNET_PUBLICIPS is a small
documentation range. (Association with running instances, and that the
address really routes, is tested with real VMs in test_network.py.)"""

import pytest

from conftest import creds_of, raises_code, running_cloud

POOL = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]


@pytest.fixture(scope="module")
def pool_cloud():
    with running_cloud(config='VNET_PUBLICIPS="203.0.113.10-12"\n') as c:
        yield c


def test_allocate_describe_release_and_exhaustion(pool_cloud):
    c = pool_cloud
    alice = c.client(creds_of(c.new_account("alice")))
    bob = c.client(creds_of(c.new_account("bob")))

    got = [alice.allocate_address(Domain="standard") for _ in range(2)]
    assert [g["PublicIp"] for g in got] == POOL[:2]
    assert all(g["Domain"] == "standard" and g["AllocationId"].startswith("eipalloc-") for g in got)
    third = bob.allocate_address()
    assert third["PublicIp"] == POOL[2]
    with raises_code("InsufficientAddressCapacity"):
        bob.allocate_address()

    # Each account sees its own addresses only.
    mine = alice.describe_addresses()["Addresses"]
    assert sorted(a["PublicIp"] for a in mine) == POOL[:2]
    assert all("InstanceId" not in a or not a["InstanceId"] for a in mine)
    assert [a["PublicIp"] for a in bob.describe_addresses()["Addresses"]] == [POOL[2]]
    one = alice.describe_addresses(PublicIps=[POOL[1]])["Addresses"]
    assert [a["AllocationId"] for a in one] == [got[1]["AllocationId"]]
    by_filter = alice.describe_addresses(
        Filters=[{"Name": "allocation-id", "Values": [got[0]["AllocationId"]]}])["Addresses"]
    assert [a["PublicIp"] for a in by_filter] == [POOL[0]]

    # Another account's address is not found, whichever way it is named,
    # and the refusal changes nothing.
    with raises_code("InvalidAddress.NotFound"):
        bob.describe_addresses(PublicIps=[POOL[0]])
    with raises_code("InvalidAddress.NotFound"):
        bob.release_address(PublicIp=POOL[0])
    with raises_code("InvalidAllocationID.NotFound"):
        bob.release_address(AllocationId=got[0]["AllocationId"])
    with raises_code("InvalidAddress.NotFound"):
        bob.disassociate_address(PublicIp=POOL[0])
    assert len(alice.describe_addresses()["Addresses"]) == 2

    # The administrator's verbose view: the whole pool and who holds it.
    c.aws("ec2", "describe-addresses")  # the CLI parses the plain form
    verbose = c.client().describe_addresses(PublicIps=["verbose"])["Addresses"]
    holders = {a["PublicIp"]: a.get("InstanceId", "") for a in verbose}
    assert set(holders) == set(POOL)
    assert "alice" in holders[POOL[0]] and "bob" in holders[POOL[2]]

    # Release gives the address back to the pool: bob can take it now.
    alice.release_address(AllocationId=got[0]["AllocationId"])
    with raises_code("InvalidAllocationID.NotFound"):
        alice.release_address(AllocationId=got[0]["AllocationId"])
    assert bob.allocate_address()["PublicIp"] == POOL[0]
    alice.release_address(PublicIp=POOL[1])
    assert alice.describe_addresses()["Addresses"] == []


def test_bad_requests_get_ec2_codes(pool_cloud):
    c = pool_cloud
    carol_creds = c.new_account("carol")
    carol = c.client(creds_of(carol_creds))
    addr = carol.allocate_address()
    with raises_code("InvalidInstanceID.NotFound"):
        carol.associate_address(InstanceId="i-12345678", PublicIp=addr["PublicIp"])
    with raises_code("InvalidInstanceID.Malformed"):
        carol.associate_address(InstanceId="x-1", PublicIp=addr["PublicIp"])
    with raises_code("InvalidAllocationID.NotFound"):
        carol.associate_address(InstanceId="i-12345678", AllocationId="eipalloc-12345678")
    with raises_code("InvalidAssociationID.NotFound"):
        carol.disassociate_address(AssociationId="eipassoc-12345678")
    with raises_code("InvalidParameterCombination"):
        carol.release_address(PublicIp=addr["PublicIp"], AllocationId=addr["AllocationId"])
    with raises_code("MissingParameter"):
        carol.release_address()
    with raises_code("UnsupportedOperation"):
        carol.allocate_address(Domain="vpc")
    # Disassociating an address that is not associated changes nothing.
    carol.disassociate_address(PublicIp=addr["PublicIp"])
    assert [a["PublicIp"] for a in carol.describe_addresses()["Addresses"]] == [addr["PublicIp"]]
    # The CLI, as euca2ools users would script it.
    out = c.aws("ec2", "describe-addresses", "--public-ips", addr["PublicIp"], creds=carol_creds)
    assert [a["PublicIp"] for a in out["Addresses"]] == [addr["PublicIp"]]
    assert c.aws_error("ec2", "release-address", "--public-ip", "203.0.113.99",
                       creds=carol_creds) == "InvalidAddress.NotFound"
    carol.release_address(PublicIp=addr["PublicIp"])


def test_default_cloud_has_no_public_pool(cloud):
    """Without VNET_PUBLICIPS there is nothing to allocate, and the error
    says so rather than handing out something unroutable."""
    with raises_code("InsufficientAddressCapacity"):
        cloud.client().allocate_address()
