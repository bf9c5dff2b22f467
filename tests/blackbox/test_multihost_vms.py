"""Security groups across NC hosts with real VMs: a CC host (CLC, Walrus,
CC), two NC hosts running QEMU guests and an internet host, each a
network namespace; the NC hosts reach the CC host over an underlay switch
and every segment spans them as VXLAN (see vmcloud.MultiHostCloud).

- two instances of one group on different NC hosts ping each other;
- an instance of another group cannot be reached privately until a
  source-group rule allows it, and then can;
- SSH from the internet to the public IP of an instance on an NC host
  works (DNAT at the CC, then the tunnel; the key exchange's full-size
  packets pass because DHCP told the guest the MTU the tunnel leaves), and
  stops after the rule is revoked;
- an elastic IP moves between instances on the two hosts, and each
  gets its earlier public address back;
- a volume attached to a guest on an NC host is served by the SC over
  TCP with TLS-PSK (never the same-host Unix socket) and holds what the
  guest wrote;
- when the instances go, the NC hosts' bridges and tunnels go too.

Needs root, QEMU, dnsmasq and nft (the test command installs them).
"""


from pathlib import Path
import subprocess

import pytest

from vmcloud import (NEEDS_VMS, MultiHostCloud, running, console, import_image, key_pair_file,
                     ssh_command, states, wait_for)

pytestmark = NEEDS_VMS

NET = 'VNET_PUBLICIPS="203.0.113.10-20"\nVNET_PUBINTERFACE="pub0"\n'


@pytest.fixture
def mhcloud():
    with running(MultiHostCloud, "ibm-", NET, internet=True) as c:
        yield c


def test_groups_span_nc_hosts_with_real_vms(mhcloud, test_image, tmp_path):
    c = mhcloud
    emi = import_image(c, test_image, "mhost")
    ec2 = c.ec2()
    pem = key_pair_file(ec2, "mh", tmp_path)
    for g in ("a", "b"):
        ec2.create_security_group(GroupName=g, Description=g)
        ec2.authorize_security_group_ingress(GroupName=g, IpProtocol="tcp", FromPort=22, ToPort=22,
                                             CidrIp="198.51.100.0/24")

    # Two of a: the scheduler spreads them over the two NC hosts.
    a1, a2 = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=emi, MinCount=2, MaxCount=2, KeyName="mh", SecurityGroups=["a"])["Instances"]]
    b1 = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, KeyName="mh",
                           SecurityGroups=["b"])["Instances"][0]["InstanceId"]
    ids = [a1, a2, b1]
    wait_for("running", lambda: all(s["State"]["Name"] == "running" for s in states(ec2, ids).values()),
             timeout=180)
    for iid in ids:
        wait_for(f"{iid} ready", lambda iid=iid: f"IRONBARK-READY instance-id={iid}" in console(ec2, iid),
                 timeout=300)
    hosts = {iid: c.node_of(iid) for iid in ids}
    assert hosts[a1] and hosts[a2] and hosts[a1] != hosts[a2], hosts
    got = states(ec2, ids)
    priv = {iid: got[iid]["PrivateIpAddress"] for iid in ids}
    pub = {iid: got[iid]["PublicIpAddress"] for iid in ids}

    ssh = ssh_command(pem, connect_timeout=5)

    def on(iid, cmd):
        """Runs cmd in the guest through SSH to its public IP from the
        internet host; its exit status and output."""
        r = c.inet_run(*ssh, f"root@{pub[iid]}", cmd, check=False, timeout=40)
        return r.returncode, r.stdout.strip()

    # SSH from the internet to a guest on an NC host: a full key exchange
    # and a command through DNAT and the tunnel.
    wait_for("ssh to a1's public IP", lambda: on(a1, "true")[0] == 0, timeout=90)
    mtu = on(a1, "cat /sys/class/net/eth0/mtu")[1]
    assert mtu == "1450", f"DHCP gave the guest MTU {mtu}, not the tunnel's 1450"

    # A volume on a guest of an NC host: TCP + TLS-PSK from the SC's host.
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]

    def vol():
        return ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]

    wait_for("volume available", lambda: vol()["State"] == "available", timeout=60)
    ec2.attach_volume(VolumeId=vid, InstanceId=a1, Device="/dev/sdb")
    wait_for("volume attached", lambda: vol()["Attachments"]
             and vol()["Attachments"][0]["State"] == "attached", timeout=90)
    serial = vid.replace("-", "", 1)
    find = f"for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {serial} ] && echo /dev/${{d##*/}}; done"
    dev = wait_for("the disk in a1", lambda: on(a1, find)[1] or None, timeout=60)
    code, out = on(a1, f"dd if=/dev/urandom of={dev} bs=1M count=4 2>/dev/null && sync && "
                       f"dd if={dev} bs=1M count=4 2>/dev/null | md5sum")
    assert code == 0 and len(out.split()[0]) == 32, out
    server = pid = None
    for p in Path("/proc").iterdir():
        try:
            args = [a.decode() for a in (p / "cmdline").read_bytes().split(b"\0")] if p.name.isdigit() else []
        except OSError:
            continue
        if args and "qemu-storage-daemon" in args[0] and any(f"/{vid}.raw" in a for a in args):
            server, pid = args[args.index("--nbd-server") + 1], p.name
    # The SC made the listener (with TCP_NODELAY) and handed it over; the
    # daemon listens on it, on the SC host's address.
    assert server and server.startswith("addr.type=fd,") and "tls-creds=" in server, server
    listening = subprocess.run(["nsenter", "-t", pid, "-n", "ss", "-Htlnp"],
                               capture_output=True, text=True, check=True).stdout
    assert any(f"{c.cc_under}:" in line and f"pid={pid}," in line
               for line in listening.splitlines()), listening
    ec2.detach_volume(VolumeId=vid)
    wait_for("volume detached", lambda: vol()["State"] == "available", timeout=90)
    ec2.delete_volume(VolumeId=vid)

    def ping(src, dst):
        return on(src, f"ping -c 2 -W 2 {priv[dst]} >/dev/null 2>&1; echo $?")[1] == "0"

    # One group, two hosts: one segment.
    assert wait_for("a1 pings a2 across hosts", lambda: ping(a1, a2), timeout=30)
    assert ping(a2, a1)
    # Another group: not a single packet, until a source-group rule.
    assert not ping(a1, b1), "a1 reached b1 without a rule"
    ec2.authorize_security_group_ingress(GroupName="b", IpPermissions=[{
        "IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "UserIdGroupPairs": [{"GroupName": "a"}]}])
    assert wait_for("a1 pings b1 once a may", lambda: ping(a1, b1), timeout=30)
    assert not ping(b1, a1), "the rule is b's ingress only"

    # An elastic IP moves from a1 to a2 (on the other host) and back off;
    # each gets its earlier public address back.
    eip = ec2.allocate_address()["PublicIp"]
    meta = "wget -qO- http://169.254.169.254/latest/meta-data/instance-id"

    def behind(ip):
        r = c.inet_run(*ssh, f"root@{ip}", meta, check=False, timeout=40)
        return r.stdout.strip() if r.returncode == 0 else None

    ec2.associate_address(InstanceId=a1, PublicIp=eip)
    assert wait_for("the elastic IP reaches a1", lambda: behind(eip) == a1, timeout=60)
    ec2.associate_address(InstanceId=a2, PublicIp=eip)
    assert wait_for("the elastic IP reaches a2", lambda: behind(eip) == a2, timeout=60)
    assert states(ec2, [a1])[a1]["PublicIpAddress"] == pub[a1], "a1 has its own address back"
    assert wait_for("a1's own address again", lambda: behind(pub[a1]) == a1, timeout=60)
    ec2.disassociate_address(PublicIp=eip)
    assert states(ec2, [a2])[a2]["PublicIpAddress"] == pub[a2]
    assert wait_for("a2's own address again", lambda: behind(pub[a2]) == a2, timeout=60)
    ec2.release_address(PublicIp=eip)

    # Revoking tcp/22 closes the public address of a guest on an NC host.
    ec2.revoke_security_group_ingress(GroupName="a", IpProtocol="tcp", FromPort=22, ToPort=22,
                                      CidrIp="198.51.100.0/24")
    wait_for("ssh refused after the revoke", lambda: behind(pub[a1]) is None, timeout=30)

    # Gone with the instances: the NC hosts' segment bridges and tunnels.
    ec2.terminate_instances(InstanceIds=ids)
    wait_for("terminated", lambda: not ec2.describe_instances()["Reservations"], timeout=90)

    def leftovers():
        return [l for n in c.NCS
                for l in c.host_run(n, "ip", "-br", "link", "show", "type", "vxlan", check=False).stdout.split("\n")
                + c.host_run(n, "ip", "-br", "link", "show", "type", "tun", check=False).stdout.split("\n")
                if l.strip()]

    wait_for("no tunnel or tap left on the NC hosts", lambda: not leftovers(), timeout=60)
