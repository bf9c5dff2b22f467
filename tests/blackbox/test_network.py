"""Public IPs, security-group rules and elastic IPs on real VMs, end to
end: an `ironbark up` in its own namespace whose CC holds the public pool
on `pub0`, a veth to an "internet" namespace that routes the pool there.
From the internet host: SSH to an instance's public IP works only while a
rule allows it, the instance's own traffic leaves with its public address,
and an elastic IP replaces the public IP and gives it back.

Needs root, QEMU, dnsmasq, nft and socat (the test command installs them).
"""

import subprocess

import pytest

from vmcloud import NEEDS_VMS, NetCloud, running, console, import_image, key_pair_file, ssh_command, states, wait_for

pytestmark = NEEDS_VMS

POOL = [f"203.0.113.{n}" for n in range(10, 21)]
CONF = 'VNET_PUBLICIPS="203.0.113.10-20"\nVNET_PUBINTERFACE="pub0"\n'


@pytest.fixture
def pubcloud():
    with running(NetCloud, "ibn-", CONF, internet=True) as c:
        yield c


def test_public_ips_rules_and_elastic_ips_on_real_vms(pubcloud, test_image, tmp_path):
    c = pubcloud
    emi = import_image(c, test_image, "net")
    ec2 = c.ec2()
    pem = key_pair_file(ec2, "net", tmp_path)
    ec2.create_security_group(GroupName="web", Description="web servers")

    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=emi, MinCount=2, MaxCount=2, KeyName="net", SecurityGroups=["web"])["Instances"]]
    wait_for("running", lambda: all(s["State"]["Name"] == "running" for s in states(ec2, ids).values()),
             timeout=120)
    for iid in ids:
        wait_for(f"{iid} ready", lambda iid=iid: f"IRONBARK-READY instance-id={iid}" in console(ec2, iid))
    got = states(ec2, ids)
    pub = {iid: got[iid]["PublicIpAddress"] for iid in ids}
    assert set(pub.values()) <= set(POOL) and len(set(pub.values())) == 2, pub

    ssh = ssh_command(pem, connect_timeout=4)

    def from_internet(ip, cmd="true"):
        r = c.inet_run(*ssh, f"root@{ip}", cmd, check=False, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    a = ids[0]
    # Default deny: nothing reaches the public address without a rule.
    assert from_internet(pub[a]) is None

    rule = dict(GroupName="web", IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="198.51.100.0/24")
    ec2.authorize_security_group_ingress(**rule)
    meta = "wget -qO- http://169.254.169.254/latest/meta-data/public-ipv4"
    seen = wait_for("ssh after authorize", lambda: from_internet(pub[a], meta), timeout=60, every=1)
    assert seen == pub[a], "the instance's metadata names its public address"

    # Outbound traffic leaves with the instance's public address (SNAT).
    responder = subprocess.Popen(
        ["ip", "netns", "exec", c.inet, "socat", "TCP-LISTEN:9000,fork,reuseaddr",
         "SYSTEM:echo $SOCAT_PEERADDR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = f"timeout 5 nc {c.inet_ip} 9000 </dev/null"
        try:
            peer = wait_for("outbound connection", lambda: from_internet(pub[a], probe), timeout=30)
        except AssertionError:
            diag = c.inet_run(*ssh, f"root@{pub[a]}", f"ip route; {probe}; echo rc=$?", check=False, timeout=30)
            raise AssertionError(f"{diag.stdout}\n{diag.stderr}\n"
                                 + c.ns_run("nft", "list", "ruleset", check=False).stdout)
        assert peer == pub[a]
    finally:
        responder.kill()

    # Drift an incremental reconcile does not look for (a rule slipped into
    # the CC's table by hand) is undone by the operator's clean restart.
    c.ns_run("nft", "insert", "rule", "ip", "ironbark", "forward", "tcp", "dport", "22", "drop")
    assert from_internet(pub[a]) is None
    c.admin("cc", "clean-restart", "--cc-url", f"http://{c.ip}:{c.port + 1}")
    assert wait_for("ssh after the clean restart", lambda: from_internet(pub[a], meta), timeout=30) == pub[a]

    # Revoke: new connections are refused again.
    ec2.revoke_security_group_ingress(**rule)
    wait_for("ssh refused after revoke", lambda: from_internet(pub[a]) is None, timeout=30)

    # An elastic IP replaces the public IP, and disassociating gives it back.
    ec2.authorize_security_group_ingress(**rule)
    wait_for("ssh again", lambda: from_internet(pub[a]) is not None, timeout=60)
    eip = ec2.allocate_address()["PublicIp"]
    assert eip in POOL and eip not in pub.values()
    ec2.associate_address(InstanceId=a, PublicIp=eip)
    assert states(ec2, [a])[a]["PublicIpAddress"] == eip
    assert wait_for("ssh to the elastic IP", lambda: from_internet(eip, meta), timeout=60) == eip
    wait_for("old address released", lambda: from_internet(pub[a]) is None, timeout=30)
    ec2.disassociate_address(PublicIp=eip)
    assert states(ec2, [a])[a]["PublicIpAddress"] == pub[a], "its earlier address back"
    assert wait_for("ssh to the earlier address", lambda: from_internet(pub[a], meta), timeout=60) == pub[a]
    assert from_internet(eip) is None, "the elastic IP routes nowhere once disassociated"
    ec2.release_address(PublicIp=eip)

    # Terminating gives the pool addresses back.
    ec2.terminate_instances(InstanceIds=ids)
    wait_for("terminated", lambda: not ec2.describe_instances()["Reservations"], timeout=60)
    again = ec2.allocate_address()["PublicIp"]
    assert again == POOL[0]
