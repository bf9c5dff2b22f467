"""EBS through a kill -9 of the whole cloud (CLC, CC, NC and SC die at
once; qemu-storage-daemons and VMs are their own processes and live on)
in the middle of CreateSnapshot, CreateVolume from a snapshot,
AttachVolume and DetachVolume. After each restart the operation
converges; nothing half-made is ever reported (no volume available before
its data is whole, no snapshot completed before its Walrus object is:
the object is checked by restoring from it alone), and no export is left
open for a volume nobody attaches.

Needs root, QEMU, qemu-storage-daemon, dnsmasq and nft (the test command
installs them).
"""

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from vmcloud import NEEDS_VMS, NetCloud, running, console, import_image, states, wait_for

pytestmark = NEEDS_VMS

MIB = 1 << 20
# Where random data goes in the 2 GiB volume: enough that a snapshot and
# a restore take seconds, so the kills land in the middle of them.
RUNS = [(0, 128), (700, 128), (1800, 128)]  # (offset MiB, length MiB)


@pytest.fixture
def ebscloud():
    with running(NetCloud, "ibk-") as c:
        yield c


def digest(path: Path) -> str:
    """MD5 of the volume's data runs (the rest is zeros in every copy)."""
    h = hashlib.md5()
    size = path.stat().st_size
    with open(path, "rb") as f:
        for off, length in RUNS:
            f.seek(off * MIB)
            h.update(f.read(length * MIB))
        # Anywhere else must read back as zeros too: sample past the runs.
        for mib in (300, 1500, size // MIB - 1):
            f.seek(mib * MIB)
            assert f.read(4096) == b"\0" * 4096, f"{path} has data at {mib} MiB"
    return h.hexdigest()


def daemons_of(vid: str) -> list[int]:
    """qemu-storage-daemon processes serving the volume."""
    out = subprocess.run(["pgrep", "-f", f"qemu-storage-daemon.*{vid}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def leftovers(c) -> list[Path]:
    return [p for p in (c.data / "sc").rglob("*") if p.name.endswith((".part", ".download"))]


def test_kill9_mid_snapshot_restore_attach_and_detach_converges(ebscloud, test_image):
    c = ebscloud
    emi = import_image(c, test_image, "ebscrash")
    ec2 = c.ec2()
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

    def volume(vid):
        return ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]

    def snapshot(sid):
        return ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]

    def restart():
        nonlocal ec2
        c.kill9()
        c.start_cloud()
        ec2 = c.ec2()

    vid = ec2.create_volume(Size=2, AvailabilityZone=zone)["VolumeId"]
    wait_for("volume available", lambda: volume(vid)["State"] == "available", timeout=60)
    vol_file = c.data / "sc" / "volumes" / f"{vid}.raw"
    with open(vol_file, "r+b") as f:
        for off, length in RUNS:
            f.seek(off * MIB)
            f.write(os.urandom(length * MIB))
        os.fsync(f.fileno())
    written = digest(vol_file)

    # CreateSnapshot, killed while it is pending: after the restart it
    # completes, and no state other than pending/completed shows.
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    time.sleep(0.5)
    assert snapshot(sid)["State"] == "pending"
    restart()
    seen = set()

    def completed():
        s = snapshot(sid)
        seen.add(s["State"])
        return s["State"] == "completed"

    wait_for("snapshot completed after the restart", completed, timeout=300)
    assert seen <= {"pending", "completed"}, seen
    assert snapshot(sid)["Progress"] == "100%"

    # The Walrus object is whole: with the SC's raw copy gone, a restore
    # reads only it (checksums verified) and gives the same bytes. The
    # restore is itself killed midway.
    raw = c.data / "sc" / "snapshots" / f"{sid}.raw"
    assert raw.exists(), "the SC keeps the snapshot's raw copy"
    raw.unlink()
    wid = ec2.create_volume(SnapshotId=sid, AvailabilityZone=zone)["VolumeId"]
    time.sleep(0.5)
    assert volume(wid)["State"] == "creating"
    restart()
    vstates = set()

    def available(v):
        s = volume(v)
        vstates.add(s["State"])
        if s["State"] == "available":
            return True
        assert s["State"] in ("creating", "available"), s
        return False

    wait_for("restored volume available", lambda: available(wid), timeout=300)
    assert digest(c.data / "sc" / "volumes" / f"{wid}.raw") == written
    assert not leftovers(c), leftovers(c)

    # AttachVolume, killed while attaching: it ends attached, served by one
    # daemon, and the guest reports the disk.
    wait_for("instance running", lambda: states(ec2, [iid])[iid]["State"]["Name"] == "running", timeout=120)
    wait_for("instance ready", lambda: f"IRONBARK-READY instance-id={iid}" in console(ec2, iid), timeout=180)
    ec2.attach_volume(VolumeId=wid, InstanceId=iid, Device="/dev/sdb")
    restart()

    def attached():
        v = volume(wid)
        return (v["State"] == "in-use" and v["Attachments"]
                and v["Attachments"][0]["State"] == "attached")

    wait_for("attached after the restart", attached, timeout=120)
    assert len(daemons_of(wid)) == 1, "one daemon serves the attached volume"

    # DetachVolume, killed right after: it ends available and its export
    # closed (no daemon left serving it).
    ec2.detach_volume(VolumeId=wid)
    restart()
    wait_for("detached after the restart",
             lambda: volume(wid)["State"] == "available" and not volume(wid)["Attachments"], timeout=120)
    wait_for("export closed", lambda: not daemons_of(wid), timeout=60)
    assert digest(c.data / "sc" / "volumes" / f"{wid}.raw") == written

    # Nobody else's export is open either, and the original volume is intact.
    assert not daemons_of(vid)
    assert digest(vol_file) == written
