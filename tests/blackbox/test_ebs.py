"""EBS through the real AWS CLI and boto3 against `ironbark up` (which
runs the SC): volumes from creating to available to deleted, snapshots
from pending to completed, sharing a snapshot with another account, and
every refusal with EC2's error code and no change. Attaching to real VMs
is in test_ebs_vms.py."""

import re
import time

import botocore.exceptions
from conftest import creds_of, raises_code
from s3util import s3_client

SNAPSHOTS = "ironbark-snapshots"


def open_uploads(s3, key):
    listed = s3.list_multipart_uploads(Bucket=SNAPSHOTS).get("Uploads", [])
    return [u for u in listed if u["Key"] == key]


def wait_until(what, fn, timeout=120, every=0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def volume(ec2, vid):
    vols = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    return vols[0]


def test_volume_life_cycle_and_refusals(cloud):
    alice = cloud.client(creds_of(cloud.new_account("ebsa")))
    bob_creds = cloud.new_account("ebsb")
    bob = cloud.client(creds_of(bob_creds))
    zone = alice.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]

    # Refusals change nothing.
    with raises_code("InvalidParameterValue"):
        alice.create_volume(Size=1, AvailabilityZone="nowhere")
    with raises_code("InvalidParameterValue"):
        alice.create_volume(Size=0, AvailabilityZone=zone)
    with raises_code("InvalidParameterValue"):
        alice.create_volume(Size=5000, AvailabilityZone=zone)
    with raises_code("MissingParameter"):
        alice.create_volume(AvailabilityZone=zone)
    with raises_code("InvalidSnapshot.NotFound"):
        alice.create_volume(SnapshotId="snap-12345678", AvailabilityZone=zone)
    assert alice.describe_volumes()["Volumes"] == []

    v = alice.create_volume(Size=1, AvailabilityZone=zone,
                            TagSpecifications=[{"ResourceType": "volume",
                                                "Tags": [{"Key": "Name", "Value": "data"}]}])
    vid = v["VolumeId"]
    assert vid.startswith("vol-") and v["Size"] == 1 and v["AvailabilityZone"] == zone
    assert v["State"] in ("creating", "available")
    wait_until("available", lambda: volume(alice, vid)["State"] == "available")
    got = volume(alice, vid)
    assert got["Attachments"] == [] and {"Key": "Name", "Value": "data"} in got["Tags"]
    by_filter = alice.describe_volumes(Filters=[{"Name": "status", "Values": ["available"]},
                                                {"Name": "tag:Name", "Values": ["data"]}])["Volumes"]
    assert [x["VolumeId"] for x in by_filter] == [vid]

    # Another account neither sees nor touches it.
    assert bob.describe_volumes()["Volumes"] == []
    with raises_code("InvalidVolume.NotFound"):
        bob.describe_volumes(VolumeIds=[vid])
    with raises_code("InvalidVolume.NotFound"):
        bob.delete_volume(VolumeId=vid)
    with raises_code("InvalidVolume.NotFound"):
        bob.create_snapshot(VolumeId=vid)
    with raises_code("InvalidVolumeID.Malformed"):
        alice.delete_volume(VolumeId="vol-nothex")
    with raises_code("InvalidInstanceID.NotFound"):
        alice.attach_volume(VolumeId=vid, InstanceId="i-12345678", Device="/dev/sdb")
    with raises_code("IncorrectState"):
        alice.detach_volume(VolumeId=vid)

    # Snapshot: pending, then completed; visible to its owner only.
    s = alice.create_snapshot(VolumeId=vid, Description="first")
    sid = s["SnapshotId"]
    assert sid.startswith("snap-") and s["State"] in ("pending", "completed")
    assert s["VolumeSize"] == 1 and s["Description"] == "first"
    wait_until("completed", lambda: alice.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
               == "completed")
    snap = alice.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert snap["Progress"] == "100%" and snap["VolumeId"] == vid
    # The object reached Walrus through the multipart upload the CLC made
    # and the SC filled part by part: complete (a multipart ETag, the whole
    # object's CRC-32 kept), and no upload left open.
    s3 = s3_client(cloud)
    key = f"{sid}.raw.gz"
    head = s3.head_object(Bucket=SNAPSHOTS, Key=key, ChecksumMode="ENABLED")
    assert re.fullmatch(r'"[0-9a-f]{32}-[0-9]+"', head["ETag"]), head["ETag"]
    assert head.get("ChecksumCRC32"), head
    assert open_uploads(s3, key) == []
    assert [x["SnapshotId"] for x in alice.describe_snapshots(OwnerIds=["self"])["Snapshots"]] == [sid]
    assert bob.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    with raises_code("InvalidSnapshot.NotFound"):
        bob.create_volume(SnapshotId=sid, AvailabilityZone=zone)

    # Shared with bob: he restores it into a volume of his own.
    bob_id = bob_creds["account_id"]
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    OperationType="add", UserIds=[bob_id])
    attr = alice.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert attr["CreateVolumePermissions"] == [{"UserId": bob_id}]
    assert [x["SnapshotId"] for x in bob.describe_snapshots(RestorableByUserIds=[bob_id])["Snapshots"]] == [sid]
    with raises_code("InvalidParameterValue"):
        bob.create_volume(SnapshotId=sid, Size=0, AvailabilityZone=zone)
    restored = bob.create_volume(SnapshotId=sid, AvailabilityZone=zone)
    assert restored["Size"] == 1 and restored["SnapshotId"] == sid
    wait_until("restored available", lambda: volume(bob, restored["VolumeId"])["State"] == "available")
    alice.reset_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert bob.describe_snapshots(RestorableByUserIds=[bob_id])["Snapshots"] == []

    # The CLI, as euca2ools users script it.
    out = cloud.aws("ec2", "describe-volumes", "--volume-ids", restored["VolumeId"], creds=bob_creds)
    assert out["Volumes"][0]["State"] == "available"

    # Delete: snapshot at once, volumes once the SC let go.
    alice.delete_snapshot(SnapshotId=sid)
    with raises_code("InvalidSnapshot.NotFound"):
        alice.delete_snapshot(SnapshotId=sid)
    try:
        s3.head_object(Bucket=SNAPSHOTS, Key=key)
        raise AssertionError("the deleted snapshot's object is still in Walrus")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
    assert open_uploads(s3, key) == []
    for ec2, v_id in [(alice, vid), (bob, restored["VolumeId"])]:
        ec2.delete_volume(VolumeId=v_id)
        wait_until("deleted", lambda ec2=ec2: ec2.describe_volumes()["Volumes"] == [])



def test_zstd_snapshots_by_cloud_property(cloud):
    """The operator picks zstd for new snapshots with a cloud property: the
    object in Walrus is zstd, and a volume restored from it (the SC's raw
    copy gone, so from Walrus) holds the snapshotted bytes. A value the SC
    cannot use is refused and changes nothing."""
    import hashlib
    import os

    prop = "cloud.storage.snapshot_compression"
    bad = cloud.admin("property", "set", prop, "xz", check=False)
    assert bad.returncode != 0 and "InvalidParameterValue" in bad.stderr, bad
    assert prop not in cloud.admin("property", "list")

    ec2 = cloud.client(creds_of(cloud.new_account("ebsz")))
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
    wait_until("available", lambda: volume(ec2, vid)["State"] == "available")
    # Data in the volume: written into its file on the SC while nothing
    # serves it (not attached, no snapshot running).
    vol_file = cloud.data_dir / "sc" / "volumes" / f"{vid}.raw"
    blocks = {0: os.urandom(65536), 300 << 20: os.urandom(4096), (1 << 30) - 8192: os.urandom(8192)}
    with open(vol_file, "r+b") as f:
        for off, data in blocks.items():
            f.seek(off)
            f.write(data)

    def digest(path):
        h = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()

    want = digest(vol_file)
    cloud.admin("property", "set", prop, "zstd")
    try:
        sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    finally:
        cloud.admin("property", "set", prop, "gzip")
    wait_until("completed", lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
               == "completed")
    s3 = s3_client(cloud)
    obj = s3.get_object(Bucket=SNAPSHOTS, Key=f"{sid}.raw.zst")["Body"].read()
    assert obj[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"
    (cloud.data_dir / "sc" / "snapshots" / f"{sid}.raw").unlink()
    rid = ec2.create_volume(SnapshotId=sid, AvailabilityZone=zone)["VolumeId"]
    wait_until("restored from Walrus", lambda: volume(ec2, rid)["State"] == "available")
    assert digest(cloud.data_dir / "sc" / "volumes" / f"{rid}.raw") == want
    for v in (vid, rid):
        ec2.delete_volume(VolumeId=v)
    ec2.delete_snapshot(SnapshotId=sid)


def test_snapshot_bucket_is_swept_of_what_no_snapshot_owns(fresh_cloud):
    """A crash between a snapshot's record and Walrus (a deleted snapshot
    whose object was not removed yet, an upload made before its record)
    leaves objects and uploads no snapshot owns; the cloud removes them when
    it starts (and every ten minutes), keeping every snapshot's own object
    and anything else the administrator put in the bucket."""
    c = fresh_cloud
    creds = creds_of(c.new_account("ebssweep"))
    ec2 = c.client(creds)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
    wait_until("available", lambda: volume(ec2, vid)["State"] == "available")
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    wait_until("completed", lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
               == "completed")

    s3 = s3_client(c)
    left_object = "snap-0123456789abcdef0.raw.gz"
    left_upload_key = "snap-0fedcba9876543210.raw.zst"
    s3.put_object(Bucket=SNAPSHOTS, Key=left_object, Body=b"a deleted snapshot's copy")
    s3.create_multipart_upload(Bucket=SNAPSHOTS, Key=left_upload_key)
    s3.put_object(Bucket=SNAPSHOTS, Key="notes.txt", Body=b"the administrator's")
    c.kill9()
    c.start()
    s3, ec2 = s3_client(c), c.client(creds)

    def swept():
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=SNAPSHOTS).get("Contents", [])]
        uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=SNAPSHOTS).get("Uploads", [])]
        return left_object not in keys and left_upload_key not in uploads and keys

    keys = wait_until("swept", swept, timeout=60)
    assert sorted(keys) == sorted([f"{sid}.raw.gz", "notes.txt"]), keys
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed"
