"""Instances on real VMs, end to end: the test image built from Debian
packages, imported into Walrus, launched by RunInstances through the CLC,
CC and NC of one `ironbark up` running inside its own network namespace,
booted by QEMU (TCG), given an address by the CC's DHCP and its identity,
key and user-data by the CC's metadata service, reached over SSH from the
CC's side of its bridge, rebooted, terminated and buried.

Needs root, QEMU, dnsmasq and nft (the test command installs them); skipped
with a message otherwise. The cloud's API listens on a veth address the
host reaches; everything else stays inside the namespace.
"""

import os
import signal
import time

import pytest

from vmcloud import NEEDS_VMS, NetCloud, SplitCloud, running, console, import_image, key_pair_file, ssh_command, states, wait_for

pytestmark = NEEDS_VMS


@pytest.fixture
def netcloud():
    with running(NetCloud, "ibt-") as c:
        yield c


def test_instances_boot_answer_ssh_reboot_terminate_and_bury(netcloud, test_image, tmp_path):
    c = netcloud
    emi = import_image(c, test_image, "testimg")
    assert emi.startswith("emi-")
    ec2 = c.ec2()
    images = {i["ImageId"]: i for i in ec2.describe_images()["Images"]}
    assert images[emi]["ImageType"] == "machine" and images[emi]["KernelId"].startswith("eki-")

    pem = key_pair_file(ec2, "e2e", tmp_path)
    user_data = "#!/bin/sh\necho USERDATA-MARKER-$(cat /proc/sys/kernel/hostname) > /dev/console\n"

    # More than the zone holds fails and starts nothing.
    with pytest.raises(Exception) as e:
        ec2.run_instances(ImageId=emi, MinCount=500, MaxCount=500, InstanceType="m1.small")
    assert "InsufficientInstanceCapacity" in str(e.value)
    assert ec2.describe_instances()["Reservations"] == []
    # Bad tags start nothing either.
    with pytest.raises(Exception) as e:
        ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1, TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "aws:x", "Value": "y"}]}])
    assert "InvalidParameterValue" in str(e.value)
    assert ec2.describe_instances()["Reservations"] == []

    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    r = ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2, InstanceType="m1.small",
                          KeyName="e2e", UserData=user_data, Placement={"AvailabilityZone": zone},
                          TagSpecifications=[
                              {"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "e2e"}]}])
    ids = [i["InstanceId"] for i in r["Instances"]]
    assert all(i["State"]["Name"] == "pending" for i in r["Instances"])
    assert all(i["Tags"] == [{"Key": "role", "Value": "e2e"}] for i in r["Instances"])
    # Instances take tags like any resource, and tag filters find them.
    ec2.create_tags(Resources=[ids[0]], Tags=[{"Key": "Name", "Value": "first"}])
    named = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["first"]}])["Reservations"]
    assert [i["InstanceId"] for res in named for i in res["Instances"]] == [ids[0]]

    wait_for("both running", lambda: all(
        s["State"]["Name"] == "running" for s in states(ec2, ids).values()), timeout=120)
    got = states(ec2, ids)
    ips = {iid: got[iid]["PrivateIpAddress"] for iid in ids}
    assert len(set(ips.values())) == 2
    assert all(got[i]["KeyName"] == "e2e" for i in ids)
    assert all(got[i]["Placement"]["AvailabilityZone"] == zone for i in ids)
    statuses = {s["InstanceId"]: s for s in ec2.describe_instance_status(InstanceIds=ids)["InstanceStatuses"]}
    assert set(statuses) == set(ids)
    assert all(s["InstanceState"]["Name"] == "running" and s["AvailabilityZone"] == zone for s in statuses.values())

    # Each guest read its own identity from the metadata service and ran its user-data.
    for iid in ids:
        try:
            text = wait_for(f"{iid} ready", lambda iid=iid: (lambda t: t if f"IRONBARK-READY instance-id={iid}" in t else None)(console(ec2, iid)))
        except AssertionError:
            raise AssertionError(f"{iid} never got ready; console:\n{console(ec2, iid)[-3000:]}\nlog:\n{c.log_tail()}")
        assert f"ip={ips[iid]}" in text
        wait_for(f"{iid} user-data", lambda iid=iid: "USERDATA-MARKER" in console(ec2, iid), timeout=60)

    # SSH with the key pair from the CC's side of the bridge; the metadata
    # service answers each instance for itself.
    ssh = ssh_command(pem)
    for iid in ids:
        out = wait_for(f"ssh to {iid}", lambda iid=iid: (lambda p: p.stdout.strip() if p.returncode == 0 else None)(
            c.ns_run(*ssh, f"root@{ips[iid]}", "wget -qO- http://169.254.169.254/latest/meta-data/instance-id",
                     check=False, timeout=30)), timeout=60, every=2)
        assert out == iid
    # The rest of the tree the issue names, as the guest reads it.
    md = "http://169.254.169.254/latest/meta-data"
    got_md = c.ns_run(*ssh, f"root@{ips[ids[0]]}",
                      f"for p in ami-id local-ipv4 placement/availability-zone public-keys/0/openssh-key "
                      f"block-device-mapping/ security-groups reservation-id; do wget -qO- {md}/$p; echo @@; done",
                      timeout=30).stdout.split("@@")
    got_md = [v.strip() for v in got_md]
    assert got_md[0] == emi and got_md[1] == ips[ids[0]] and got_md[2] == zone, got_md
    assert got_md[3].startswith("ssh-rsa ") and "ami" in got_md[4].split(), got_md
    assert got_md[5] == "default" and got_md[6] == r["ReservationId"], got_md

    # Reboot: the guest comes back and says so again.
    ec2.reboot_instances(InstanceIds=[ids[0]])
    wait_for("second READY after reboot", lambda: console(ec2, ids[0]).count(f"IRONBARK-READY instance-id={ids[0]}") >= 2)

    # Terminate: shutting-down, then terminated within seconds; the VM and its files are gone.
    c.admin("property", "set", "cloud.cluster.poll_interval", "1")
    t0 = time.time()
    out = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {o["CurrentState"]["Name"] for o in out} == {"shutting-down"}
    wait_for("owner no longer lists them", lambda: not ec2.describe_instances()["Reservations"], timeout=30, every=0.2)
    took = time.time() - t0
    assert took < 15, f"terminate took {took:.1f}s"
    for iid in ids:
        assert not list((c.data / "nc" / "instances").glob(f"*/{iid}")), "instance directory deleted"
    assert not c.qemu_pids(), "no QEMU left in the cloud's namespace"
    verbose = ec2.describe_instances(InstanceIds=["verbose"])["Reservations"]
    seen = {i["InstanceId"]: i["State"]["Name"] for r in verbose for i in r["Instances"]}
    assert all(seen.get(iid) == "terminated" for iid in ids), seen

    # BURIED: with a short delay the records are erased.
    c.admin("property", "set", "cloud.vmstate.terminated_time", "1")
    wait_for("buried", lambda: not any(
        i["InstanceId"] in ids for r in ec2.describe_instances(InstanceIds=["verbose"])["Reservations"]
        for i in r["Instances"]), timeout=60)


def test_kill9_of_the_whole_cloud_mid_run_and_mid_terminate_converges(netcloud, test_image):
    c = netcloud
    emi = import_image(c, test_image, "crash")
    ec2 = c.ec2()
    c.admin("property", "set", "cloud.cluster.poll_interval", "1")

    # Killed right after RunInstances answered: on restart the instance runs
    # (exactly one VM for it) and is reported running.
    a = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    c.kill9()
    c.start_cloud()
    ec2 = c.ec2()
    wait_for("a running after restart", lambda: states(ec2, [a])[a]["State"]["Name"] == "running", timeout=120)
    wait_for("a ready", lambda: f"IRONBARK-READY instance-id={a}" in console(ec2, a))
    wait_for("one VM", lambda: len(c.qemu_pids()) == 1, timeout=30)

    # Killed right after TerminateInstances answered: on restart it ends up
    # terminated, with no VM, tap, lease or directory left behind.
    a_ip = states(ec2, [a])[a]["PrivateIpAddress"]
    ec2.terminate_instances(InstanceIds=[a])
    c.kill9()
    c.start_cloud()
    ec2 = c.ec2()
    wait_for("a gone from the owner's listing", lambda: not ec2.describe_instances()["Reservations"], timeout=60)
    wait_for("no VM left", lambda: not c.qemu_pids(), timeout=60)
    wait_for("no tap left", lambda: not c.taps(), timeout=60)
    assert not list((c.data / "nc" / "instances").glob(f"*/{a}"))
    # No DHCP lease or host entry for it is left either.
    def lease_files():
        return [p for p in (c.data / "cc" / "dhcp").glob("*/*") if p.name in ("leases", "hosts")]
    wait_for("no lease left", lambda: not any(a_ip in p.read_text() for p in lease_files()), timeout=60)
    verbose = ec2.describe_instances(InstanceIds=["verbose"])["Reservations"]
    assert {i["InstanceId"]: i["State"]["Name"] for r in verbose for i in r["Instances"]}.get(a) == "terminated"


@pytest.fixture
def splitcloud():
    with running(SplitCloud, "ibs-") as c:
        yield c


def test_terminate_broadcasts_when_the_instances_nc_does_not_answer(splitcloud, test_image):
    """The original's contract: when the CC gets no answer from the
    instance's NC in time, it sends the terminate to every NC it manages;
    the instance stays shutting-down until the CLC knows the VM is gone,
    and ends terminated with its directory deleted once its NC answers."""
    c = splitcloud
    emi = import_image(c, test_image, "split")
    ec2 = c.ec2()
    c.admin("property", "set", "cloud.cluster.poll_interval", "1")
    iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_for("running", lambda: states(ec2, [iid])[iid]["State"]["Name"] == "running", timeout=120)
    wait_for("ready", lambda: f"IRONBARK-READY instance-id={iid}" in console(ec2, iid))
    where = [n for n in c.NCS if list((c.root / n / "nc" / "instances").glob(f"*/{iid}"))]
    assert len(where) == 1, where
    host, other = where[0], next(n for n in c.NCS if n != where[0])

    # The instance's NC stops answering (its process is frozen).
    os.killpg(c.procs[host].pid, signal.SIGSTOP)
    out = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"]
    assert out[0]["CurrentState"]["Name"] == "shutting-down"
    cc_log = c.log_tail("cc")
    assert "did not answer the terminate; asking every node" in cc_log, cc_log
    # The other NC acknowledged the broadcast (it does not run the instance).
    assert any("terminate broadcast" in l and other in l for l in cc_log.splitlines()), cc_log
    time.sleep(3)
    seen = states(ec2, [iid])
    assert seen[iid]["State"]["Name"] == "shutting-down", "not terminated while the VM may still run"
    assert list((c.root / host / "nc" / "instances").glob(f"*/{iid}"))

    # It answers again: the VM stops, its directory goes, the CLC learns it.
    os.killpg(c.procs[host].pid, signal.SIGCONT)
    wait_for("owner no longer lists it", lambda: not ec2.describe_instances()["Reservations"], timeout=60)
    assert not list((c.root / host / "nc" / "instances").glob(f"*/{iid}")), "instance directory deleted"
    wait_for("no VM left", lambda: not c.qemu_pids(), timeout=30)
    verbose = ec2.describe_instances(InstanceIds=["verbose"])["Reservations"]
    assert {i["InstanceId"]: i["State"]["Name"] for r in verbose for i in r["Instances"]}.get(iid) == "terminated"
