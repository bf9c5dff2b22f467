"""EBS volumes on real VMs, end to end through the AWS API: a volume is
attached to a running guest (hot-plugged over QMP as a virtio disk whose
serial is the volume id, served by the SC over NBD on a Unix socket only
root can reach, as the NC shares the SC's host), written
and checksummed inside the guest, detached, attached to a second guest
where the checksum matches; a snapshot of it restored into a new volume
holds the same data, from the SC's raw copy and from Walrus alike; a
volume force-detached from one guest and attached to another is out of
the first one's reach; terminating an instance leaves its volume available
with its data intact.

Needs root, QEMU, qemu-storage-daemon, dnsmasq and nft (the test command
installs them).
"""


import os
import stat
from pathlib import Path

import pytest

from vmcloud import NEEDS_VMS, NetCloud, running, console, import_image, key_pair_file, ssh_command, states, wait_for

pytestmark = NEEDS_VMS

MIB = 4  # how much data the guests write and checksum


def nbd_server_of(vid):
    """The --nbd-server option of the qemu-storage-daemon serving vid."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            args = [a.decode() for a in (p / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if args and "qemu-storage-daemon" in args[0] and any(f"/{vid}.raw" in a for a in args):
            return args[args.index("--nbd-server") + 1]
    return None


@pytest.fixture
def ebscloud():
    with running(NetCloud, "ibe-") as c:
        yield c


def test_volumes_move_between_guests_and_survive_them(ebscloud, test_image, tmp_path):
    c = ebscloud
    emi = import_image(c, test_image, "ebs")
    ec2 = c.ec2()
    pem = key_pair_file(ec2, "ebs", tmp_path)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]

    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=emi, MinCount=2, MaxCount=2, KeyName="ebs")["Instances"]]
    wait_for("running", lambda: all(s["State"]["Name"] == "running" for s in states(ec2, ids).values()),
             timeout=120)
    for iid in ids:
        wait_for(f"{iid} ready", lambda iid=iid: f"IRONBARK-READY instance-id={iid}" in console(ec2, iid))
    ips = {iid: s["PrivateIpAddress"] for iid, s in states(ec2, ids).items()}
    a, b = ids

    ssh = ssh_command(pem)

    def guest(iid, cmd):
        r = c.ns_run(*ssh, f"root@{ips[iid]}", cmd, check=False, timeout=60)
        assert r.returncode == 0, f"{cmd} on {iid}: {r.stderr}"
        return r.stdout.strip()

    def disk_of(iid, vid):
        """The guest's block device whose virtio serial is the volume id
        without its dash, as EC2 names EBS disks."""
        out = guest(iid, "for d in /sys/block/vd*; do echo ${d##*/} $(cat $d/serial 2>/dev/null); done")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == vid.replace("-", "", 1):
                return f"/dev/{parts[0]}"
        return None

    def attached(vid, iid):
        v = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
        return (v["State"] == "in-use" and v["Attachments"]
                and v["Attachments"][0]["State"] == "attached" and v["Attachments"][0]["InstanceId"] == iid)

    def available(vid):
        v = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
        return v["State"] == "available" and not v["Attachments"]

    def md5_of(iid, dev):
        return guest(iid, f"dd if={dev} bs=1M count={MIB} 2>/dev/null | md5sum").split()[0]

    vid = ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
    wait_for("volume available", lambda: available(vid), timeout=60)

    # Attach to a: the guest sees a disk with the volume id as its serial.
    att = ec2.attach_volume(VolumeId=vid, InstanceId=a, Device="/dev/sdb")
    assert att["State"] in ("attaching", "attached") and att["Device"] == "/dev/sdb"
    wait_for("attached to a", lambda: attached(vid, a), timeout=90)
    dev = wait_for("disk in a", lambda: disk_of(a, vid), timeout=60)
    # ironbark up's NC shares the SC's host: the export is a Unix socket
    # only root can reach, no TCP listener, no TLS.
    server = nbd_server_of(vid)
    assert server and server.startswith("addr.type=unix,") and "tls-creds" not in server, server
    sock = Path(server.split("addr.path=")[1].split(",")[0])
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and sock.parent.stat().st_uid == os.geteuid()
    guest(a, f"dd if=/dev/urandom of={dev} bs=1M count={MIB} 2>/dev/null && sync")
    written = md5_of(a, dev)
    with pytest.raises(Exception) as e:
        ec2.delete_volume(VolumeId=vid)
    assert "VolumeInUse" in str(e.value)

    # Detach: gone from a's guest, then available.
    ec2.detach_volume(VolumeId=vid)
    wait_for("detached", lambda: available(vid), timeout=90)
    assert disk_of(a, vid) is None, "the guest no longer has the disk"

    # Attach to b: same bytes.
    ec2.attach_volume(VolumeId=vid, InstanceId=b, Device="/dev/vdc")
    wait_for("attached to b", lambda: attached(vid, b), timeout=90)
    dev_b = wait_for("disk in b", lambda: disk_of(b, vid), timeout=60)
    assert md5_of(b, dev_b) == written

    # A snapshot taken while attached, restored into a new volume, holds
    # the same data.
    sid = ec2.create_snapshot(VolumeId=vid, Description="while attached")["SnapshotId"]
    wait_for("snapshot completed", lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"]
             == "completed", timeout=120)
    rid = ec2.create_volume(SnapshotId=sid, AvailabilityZone=zone)["VolumeId"]
    wait_for("restored available", lambda: available(rid), timeout=120)
    ec2.attach_volume(VolumeId=rid, InstanceId=a, Device="/dev/sdc")
    wait_for("restored attached", lambda: attached(rid, a), timeout=90)
    dev_r = wait_for("restored disk in a", lambda: disk_of(a, rid), timeout=60)
    assert md5_of(a, dev_r) == written

    # With the SC's raw copy gone, a restore comes from the compressed copy
    # in Walrus (its checksums verified): the same bytes again.
    raw = c.data / "sc" / "snapshots" / f"{sid}.raw"
    assert raw.exists(), "the SC keeps the snapshot's raw copy"
    raw.unlink()
    wid = ec2.create_volume(SnapshotId=sid, AvailabilityZone=zone)["VolumeId"]
    wait_for("restored from Walrus", lambda: available(wid), timeout=120)
    ec2.attach_volume(VolumeId=wid, InstanceId=a, Device="/dev/sde")
    wait_for("Walrus copy attached", lambda: attached(wid, a), timeout=90)
    dev_w = wait_for("Walrus copy in a", lambda: disk_of(a, wid), timeout=60)
    assert md5_of(a, dev_w) == written

    # Force-detached from b (its guest is not asked) and attached to a at
    # once: a reads the same bytes, and b can no longer read the volume
    # (its export is withdrawn, and a's is a new one b's QEMU cannot open).
    ec2.detach_volume(VolumeId=vid, Force=True)
    wait_for("force-detached", lambda: available(vid), timeout=90)
    ec2.attach_volume(VolumeId=vid, InstanceId=a, Device="/dev/sdf")
    wait_for("attached to a after the force", lambda: attached(vid, a), timeout=90)
    dev_f = wait_for("disk in a after the force", lambda: disk_of(a, vid), timeout=60)
    assert md5_of(a, dev_f) == written
    r = c.ns_run(*ssh, f"root@{ips[b]}", f"dd if={dev_b} of=/dev/null bs=4k count=1 iflag=direct",
                 check=False, timeout=60)
    assert r.returncode != 0, f"b still reads the force-detached volume: {r.stdout} {r.stderr}"
    ec2.detach_volume(VolumeId=vid)
    wait_for("detached from a", lambda: available(vid), timeout=90)
    ec2.attach_volume(VolumeId=vid, InstanceId=b, Device="/dev/vdc")
    wait_for("attached to b again", lambda: attached(vid, b), timeout=90)

    # Terminating b leaves its volume available, data intact.
    ec2.terminate_instances(InstanceIds=[b])
    wait_for("volume freed by the terminate", lambda: available(vid), timeout=90)
    ec2.attach_volume(VolumeId=vid, InstanceId=a, Device="/dev/sdd")
    wait_for("attached to a again", lambda: attached(vid, a), timeout=90)
    dev_a2 = wait_for("disk in a again", lambda: disk_of(a, vid), timeout=60)
    assert md5_of(a, dev_a2) == written

    # Clean up through the API: detach, delete; nothing of them stays.
    for v in (vid, rid, wid):
        ec2.detach_volume(VolumeId=v)
    for v in (vid, rid, wid):
        wait_for(f"{v} detached", lambda v=v: available(v), timeout=90)
        ec2.delete_volume(VolumeId=v)
    wait_for("volumes deleted", lambda: ec2.describe_volumes()["Volumes"] == [], timeout=60)
    assert not list((c.data / "sc" / "volumes").glob("vol-*")), "the SC dropped the files"
