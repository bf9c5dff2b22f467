"""Clouds that run real VMs for the black-box tests: `ironbark up` inside
a network namespace of its own (NetCloud), or the roles as separate
processes (SplitCloud), plus the helpers the VM tests share. Everything
they make lives in their namespaces and is removed by stop()."""

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import pytest

from conftest import REGION, _retries, ironbark_bin

NEEDS = ["qemu-system-x86_64", "qemu-img", "dnsmasq", "nft", "ip", "ssh"]
MISSING = [t for t in NEEDS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
NEEDS_VMS = pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING),
    reason=f"needs root and {', '.join(MISSING) or 'nothing'}",
)

DEB_CACHE = Path(os.environ.get("IRONBARK_DEB_CACHE", "/var/cache/ironbark/debs"))


def sh(*args, check=True, timeout=120, **kw):
    return subprocess.run(list(args), check=check, timeout=timeout, capture_output=True, text=True, **kw)


def build_test_image(out):
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    sh(str(ironbark_bin()), "image", "build-test", "--out", str(out), "--cache", str(DEB_CACHE), timeout=600)
    assert (out / "vmlinuz").stat().st_size > 1_000_000
    assert (out / "initrd.img").stat().st_size > 100_000
    return out


@contextlib.contextmanager
def running(cls, prefix, *args, internet=False, **kw):
    """A started cloud of class `cls` under a fresh short /tmp root (QMP
    sockets live in instance directories and unix socket paths stop at
    107 bytes), with the internet host if asked; stopped and removed
    afterwards, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # dnsmasq drops to `nobody` and must still reach its files in the CC's
    # state dir; mkdtemp's 0700 would hide them.
    root.chmod(0o755)
    c = cls(root, *args, **kw)
    try:
        c.setup_net()
        if internet:
            c.add_internet()
        yield c.start_cloud()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def kill_netns(ns):
    """Kills whatever runs in namespace `ns` (QEMU and dnsmasq daemonize,
    so they are not our children) and deletes it."""
    for p in sh("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", ns, check=False)


class NetCloud:
    """An `ironbark up` inside its own network namespace, reachable from
    the host through a veth pair."""

    def __init__(self, root: Path, config: str | None = None):
        self.root = root
        self.config = config
        self.data = root / "data"
        n = uuid.uuid4().int % 200 + 20
        self.ns = f"ibt{uuid.uuid4().hex[:8]}"
        self.host_if = f"vh{self.ns[3:]}"
        self.ns_if = f"vn{self.ns[3:]}"
        self.host_ip = f"10.254.{n}.1"
        self.ip = f"10.254.{n}.2"
        self.port = 8773
        self.proc = None
        self.inet = None

    def ns_run(self, *args, **kw):
        return sh("ip", "netns", "exec", self.ns, *args, **kw)

    def setup_net(self):
        sh("ip", "netns", "add", self.ns)
        self.ns_run("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.ns_run("ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if)
        self.ns_run("ip", "link", "set", self.ns_if, "up")

    def add_internet(self, pub_if="pub0", cloud_ip="198.51.100.1", inet_ip="198.51.100.2",
                     public="203.0.113.0/24"):
        """An "internet" host: its own namespace on a veth whose cloud end
        is the CC's public interface; it routes the public pool there."""
        self.inet = f"{self.ns}i"
        sh("ip", "netns", "add", self.inet)
        self.inet_run("ip", "link", "set", "lo", "up")
        self.ns_run("ip", "link", "add", pub_if, "type", "veth", "peer", "name", "inet0")
        self.ns_run("ip", "link", "set", "inet0", "netns", self.inet)
        self.ns_run("ip", "addr", "add", f"{cloud_ip}/24", "dev", pub_if)
        self.ns_run("ip", "link", "set", pub_if, "up")
        self.inet_run("ip", "addr", "add", f"{inet_ip}/24", "dev", "inet0")
        self.inet_run("ip", "link", "set", "inet0", "up")
        self.inet_run("ip", "route", "add", public, "via", cloud_ip)
        self.inet_ip = inet_ip

    def inet_run(self, *args, **kw):
        return sh("ip", "netns", "exec", self.inet, *args, **kw)

    def start_cloud(self):
        self.log = open(self.root / "ironbark.log", "ab")
        extra = []
        if self.config is not None:
            conf = self.root / "ironbark.conf"
            conf.write_text(self.config)
            extra = ["--config", str(conf)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(ironbark_bin()), "up", "--data-dir", str(self.data),
             "--listen", f"{self.ip}:{self.port}", "--walrus-listen", "127.0.0.1:8780", *extra],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if (self.data / "admin" / "credentials").exists():
                try:
                    self.ec2().describe_regions()
                    return self
                except Exception:
                    pass
            assert self.proc.poll() is None, self.log_tail()
            time.sleep(0.3)
        raise RuntimeError("ironbark did not start:\n" + self.log_tail())

    def log_tail(self):
        try:
            return (self.root / "ironbark.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def creds(self):
        text = (self.data / "admin" / "credentials").read_text()
        kv = dict(l.split(" = ", 1) for l in text.splitlines() if " = " in l)
        return kv["aws_access_key_id"], kv["aws_secret_access_key"]

    def ec2(self):
        key, secret = self.creds()
        return boto3.client("ec2", endpoint_url=f"http://{self.ip}:{self.port}/", region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret, config=_retries())

    def admin(self, *args):
        r = sh(str(ironbark_bin()), "admin", "--data-dir", str(self.data), *args, timeout=300, check=False)
        assert r.returncode == 0, f"ironbark admin {' '.join(args)}: {r.stderr}"
        return r.stdout

    def kill9(self):
        """The whole cloud process dies at once (its VMs are their own
        processes and live on, as on a real host)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def taps(self):
        out = self.ns_run("ip", "-br", "link", "show", "type", "tun", check=False).stdout
        return [l.split()[0] for l in out.splitlines() if l.strip()]

    def qemu_pids(self):
        out = []
        for p in sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
                state = Path(f"/proc/{p}/stat").read_text().split()[2]
            except OSError:
                continue
            if b"qemu-system" in cmd and state != "Z":
                out.append(p)
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        kill_netns(self.ns)
        sh("ip", "link", "del", self.host_if, check=False)
        if self.inet:
            kill_netns(self.inet)


def ssh_command(pem, connect_timeout=10):
    """ssh with the key pair's private key, no host-key prompts."""
    return ["ssh", "-i", str(pem), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "BatchMode=yes"]


def key_pair_file(ec2, name, directory):
    """Creates key pair `name`; returns its private key file (0600)."""
    pem = directory / f"{name}.pem"
    pem.write_text(ec2.create_key_pair(KeyName=name)["KeyMaterial"])
    pem.chmod(0o600)
    return pem


def import_image(cloud, test_image, name):
    """`ironbark admin image import` of the test image; the emi- id."""
    return cloud.admin("image", "import", "--kernel", str(test_image / "vmlinuz"),
                       "--ramdisk", str(test_image / "initrd.img"), "--name", name).split()[-1]


def wait_for(what, fn, timeout=240, every=1.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def console(ec2, iid):
    out = ec2.get_console_output(InstanceId=iid).get("Output") or ""
    # boto3 decodes base64 for us on some versions; accept either.
    try:
        return base64.b64decode(out, validate=True).decode(errors="replace")
    except Exception:
        return out


def states(ec2, ids):
    res = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i for r in res for i in r["Instances"]}


class SplitCloud(NetCloud):
    """The roles as separate processes, as on separate hosts: `ironbark clc`
    (with Walrus), `ironbark cc` driving two NCs, and two `ironbark nc`, all
    in one network namespace, each with its own data dir, configuration
    file and a copy of the CLC's cluster token."""

    NCS = {"nc-1": 8775, "nc-2": 8785}

    def __init__(self, root: Path):
        super().__init__(root)
        self.data = root / "clc"
        self.procs = {}

    def spawn(self, name, *args):
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(ironbark_bin()), *args],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

    def conf(self, name, text):
        p = self.root / f"{name}.conf"
        p.write_text(text)
        return str(p)

    def start_cloud(self):
        self.spawn("clc", "clc", "--data-dir", str(self.data), "--listen", f"{self.ip}:{self.port}",
                   "--walrus-listen", "127.0.0.1:8780",
                   "--config", self.conf("clc", 'CC_URL="http://127.0.0.1:8774"\n'))
        self.proc = self.procs["clc"]
        self.share_token()
        nodes = " ".join(f"{n}=http://127.0.0.1:{p}" for n, p in self.NCS.items())
        self.spawn("cc", "cc", "--data-dir", str(self.root / "cc"), "--listen", "127.0.0.1:8774",
                   "--config", self.conf("cc", f'NODES="{nodes}"\nCLC_URL="http://{self.ip}:{self.port}"\n'))
        for n, p in self.NCS.items():
            self.spawn(n, "nc", "--data-dir", str(self.root / n), "--listen", f"127.0.0.1:{p}",
                       "--config", self.conf(n, f'NC_ID="{n}"\nCC_URL="http://127.0.0.1:8774"\n'))
        return self.wait_started()

    def share_token(self):
        """Copies the CLC's cluster token to the CC's and NCs' data dirs,
        as an operator would to other hosts."""
        token = self.data / "keys" / "cluster.token"
        wait_for("the CLC's cluster token", token.exists, timeout=60, every=0.2)
        for role in ["cc", *self.NCS]:
            (self.root / role / "keys").mkdir(parents=True, exist_ok=True)
            shutil.copy(token, self.root / role / "keys" / "cluster.token")

    def wait_started(self):
        """Waits until the CLC answers, failing early if a role died."""
        deadline = time.time() + 60
        while time.time() < deadline:
            if (self.data / "admin" / "credentials").exists():
                try:
                    self.ec2().describe_regions()
                    return self
                except Exception:
                    pass
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.log_tail(name)}"
            time.sleep(0.3)
        raise RuntimeError("the CLC did not start:\n" + self.log_tail("clc"))

    def log_tail(self, name="clc"):
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                # A test may have stopped a role (SIGSTOP); let it die.
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        super().stop()


class MultiHostCloud(SplitCloud):
    """A CC host and two NC hosts, each a network namespace, joined by an
    underlay switch (a bridge in a namespace of its own) on their `priv0`
    interfaces: `ironbark clc` (with Walrus), `ironbark cc` and `ironbark
    sc` on the CC host (the SC's NBD exports on its underlay address, no
    NC of its own), one `ironbark nc` on each NC host running real QEMU
    guests.
    Segments reach the NC hosts as VXLAN over the underlay; the CC host
    also holds the public pool on `pub0`, towards the internet host
    (add_internet)."""

    def __init__(self, root: Path, network_conf: str):
        super().__init__(root)
        self.network_conf = network_conf
        n = uuid.uuid4().int % 200 + 20
        self.under = f"10.77.{n}"
        self.cc_under = f"{self.under}.1"
        self.hosts = {name: f"{self.ns}{i}" for i, name in enumerate(self.NCS, start=1)}
        self.nc_ip = {name: f"{self.under}.{i + 1}" for i, name in enumerate(self.NCS, start=1)}
        self.switch = f"{self.ns}s"

    def host_run(self, nc, *args, **kw):
        return sh("ip", "netns", "exec", self.hosts[nc], *args, **kw)

    def setup_net(self):
        super().setup_net()
        sh("ip", "netns", "add", self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for ns, ip in [(self.ns, self.cc_under)] + [(self.hosts[n], self.nc_ip[n]) for n in self.NCS]:
            if ns != self.ns:
                sh("ip", "netns", "add", ns)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            port = f"p{ns[-9:]}"
            sh("ip", "netns", "exec", self.switch, "ip", "link", "add", port, "type", "veth",
               "peer", "name", "priv0", "netns", ns)
            sh("ip", "netns", "exec", self.switch, "ip", "link", "set", port, "master", "br0", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "priv0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "priv0", "up")

    def spawn_in(self, ns, name, *args):
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(ironbark_bin()), *args],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

    def start_cloud(self):
        net = self.network_conf
        self.spawn("clc", "clc", "--data-dir", str(self.data), "--listen", f"{self.ip}:{self.port}",
                   "--walrus-listen", f"{self.cc_under}:8780",
                   "--config", self.conf("clc", f'CC_URL="http://{self.cc_under}:8774"\n'
                                                'SC_URL="http://127.0.0.1:8776"\n' + net))
        self.proc = self.procs["clc"]
        self.share_token()
        (self.root / "sc" / "keys").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.data / "keys" / "cluster.token", self.root / "sc" / "keys" / "cluster.token")
        self.spawn("sc", "sc", "--data-dir", str(self.root / "sc"), "--listen", "127.0.0.1:8776",
                   "--config", self.conf("sc", f'SC_NBD_HOST="{self.cc_under}"\n'))
        nodes = " ".join(f"{n}=http://{self.nc_ip[n]}:8775" for n in self.NCS)
        self.spawn("cc", "cc", "--data-dir", str(self.root / "cc"), "--listen", f"{self.cc_under}:8774",
                   "--config", self.conf("cc", f'NODES="{nodes}"\nCLC_URL="http://{self.ip}:{self.port}"\n'
                                               f'VNET_PRIVINTERFACE="priv0"\n{net}'))
        for n in self.NCS:
            self.spawn_in(self.hosts[n], n, "nc", "--data-dir", str(self.root / n),
                          "--listen", f"{self.nc_ip[n]}:8775",
                          "--config", self.conf(n, f'NC_ID="{n}"\nCC_URL="http://{self.cc_under}:8774"\n'
                                                   'VNET_PRIVINTERFACE="priv0"\n'))
        return self.wait_started()

    def node_of(self, iid):
        """The NC host whose data dir holds the instance."""
        for n in self.NCS:
            if list((self.root / n / "nc" / "instances").glob(f"*/{iid}")):
                return n
        return None

    def stop(self):
        super().stop()
        for ns in [*self.hosts.values(), self.switch]:
            kill_netns(ns)
