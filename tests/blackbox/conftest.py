"""Fixtures and helpers of the black-box suite.

Every cloud here is a real `ironbark up` process with its own temporary data
dir, listening on a free port on 127.0.0.1, driven only from outside: the
real AWS CLI (from this venv), boto3, hand-signed HTTP requests and the
`ironbark admin` command.
"""

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.exceptions
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "eucalyptus"
PROFILE = "ironbark-admin"
API_VERSION = "2016-11-15"

# Nothing from the developer's own AWS setup may leak into the clients under
# test, and no client may ever look for credentials off this machine.
for _k in list(os.environ):
    if _k.startswith("AWS_"):
        del os.environ[_k]
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def ironbark_bin() -> Path:
    p = Path(os.environ.get("IRONBARK_BIN", "target/debug/ironbark"))
    if not p.is_absolute():
        cwd = Path.cwd() / p
        p = cwd if cwd.exists() else REPO_ROOT / p
    if not p.exists():
        pytest.exit(f"ironbark binary not found at {p}: build it (cargo build -p ironbark) "
                    "or set IRONBARK_BIN", returncode=2)
    return p


_UP_HELP = None


def up_options() -> str:
    """`ironbark up --help`, read once: which listen options this build has."""
    global _UP_HELP
    if _UP_HELP is None:
        _UP_HELP = subprocess.run([str(ironbark_bin()), "up", "--help"], capture_output=True,
                                  text=True, timeout=30).stdout
    return _UP_HELP


def _die_with_parent():
    """Linux: the server gets SIGKILL if this test process dies abruptly, so
    no cloud outlives a killed test run."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A fresh lower-case name, valid as an account, group or key name."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _retries():
    return botocore.config.Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=60,
    )


class Cloud:
    """One `ironbark up` process and its data dir."""

    def __init__(self, root: Path, config: str | None = None):
        self.root = root
        self.config = config
        self.data_dir = root / "data"
        self.log_path = root / "ironbark.log"
        self.port = None
        self.port_was_reused = False
        self.walrus_port = None
        self.proc = None
        self._log = None

    # ---- lifecycle -------------------------------------------------------

    def start(self, port=None):
        """Starts the server (on `port` if given, else a free one) and waits
        until it answers. Retries on a fresh port if the port was taken."""
        assert self.proc is None, "already running"
        last = ""
        for attempt in range(5):
            p = port if (port is not None and attempt == 0) else free_port()
            self._log = open(self.log_path, "ab")
            args = [str(ironbark_bin()), "up", "--data-dir", str(self.data_dir),
                    "--listen", f"127.0.0.1:{p}"]
            if self.config is not None:
                conf = self.root / "ironbark.conf"
                conf.write_text(self.config)
                args += ["--config", str(conf)]
            if "--walrus-listen" in up_options():
                # Builds that serve S3 on a port of their own get a free one
                # too, rather than their default next to the EC2 port.
                if self.walrus_port is None or attempt > 0:
                    self.walrus_port = free_port()
                args += ["--walrus-listen", f"127.0.0.1:{self.walrus_port}"]
            self.proc = subprocess.Popen(
                args,
                stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            self.port = p
            if self._wait_ready():
                self.port_was_reused = port is not None and p == port
                return self
            last = self.log_tail()
            self._reap(signal.SIGKILL)
        raise RuntimeError(f"ironbark did not start:\n{last}")

    def _wait_ready(self, timeout=30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # exited: port taken or startup failure
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # Something answers: make sure it is our cloud, which knows the
            # administrator key this data dir holds.
            if self._answers_as_ours():
                return self.proc.poll() is None
            time.sleep(0.1)
        return False

    def _answers_as_ours(self) -> bool:
        try:
            status, _ = self.send_v4({"Action": "DescribeRegions", "Version": API_VERSION})
            return status == 200
        except (OSError, KeyError):
            return False

    def _reap(self, sig):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        rc = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None
        return rc

    def stop(self):
        """Graceful stop with SIGTERM; returns the exit code."""
        return self._reap(signal.SIGTERM)

    def kill9(self):
        return self._reap(signal.SIGKILL)

    def log_tail(self, n=4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- where things are ------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}/"

    @property
    def admin_dir(self) -> Path:
        return self.data_dir / "admin"

    def admin_creds(self) -> dict:
        """The administrator's key, read from DIR/admin/credentials."""
        creds = {}
        for line in (self.admin_dir / "credentials").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                creds[k.strip()] = v.strip()
        return {
            "access_key_id": creds["aws_access_key_id"],
            "secret_access_key": creds["aws_secret_access_key"],
        }

    # ---- clients ---------------------------------------------------------

    def client(self, creds=None, path="/", region=REGION, **config):
        """A boto3 EC2 client signing with `creds` (default: the admin's)."""
        creds = creds or self.admin_creds()
        cfg = _retries()
        if config:
            cfg = cfg.merge(botocore.config.Config(**config))
        return boto3.session.Session().client(
            "ec2",
            endpoint_url=f"http://{self.host}{path}",
            region_name=region,
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
            config=cfg,
        )

    def aws(self, *args, creds=None, check=True, timeout=60):
        """Runs the real AWS CLI from this venv with the cloud's own
        DIR/admin/config and --profile ironbark-admin (no --endpoint-url).
        With `creds`, the same config and profile name but a credentials
        file holding that key. Returns parsed JSON output (or None) when
        check=True, else the CompletedProcess."""
        cred_file = self.admin_dir / "credentials"
        if creds is not None:
            d = self.root / f"cli-{creds['access_key_id']}"
            d.mkdir(exist_ok=True)
            cred_file = d / "credentials"
            cred_file.write_text(
                f"[{PROFILE}]\naws_access_key_id = {creds['access_key_id']}\n"
                f"aws_secret_access_key = {creds['secret_access_key']}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({
            "AWS_SHARED_CREDENTIALS_FILE": str(cred_file),
            "AWS_CONFIG_FILE": str(self.admin_dir / "config"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_PAGER": "",
        })
        aws_bin = Path(sys.executable).parent / "aws"
        cmd = [str(aws_bin), "--profile", PROFILE, "--output", "json", *args]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=timeout, cwd=self.root)
        if not check:
            return res
        assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode}): {res.stderr}"
        return json.loads(res.stdout) if res.stdout.strip() else None

    def aws_error(self, *args, creds=None) -> str:
        """Runs the AWS CLI expecting a service error; returns its code."""
        res = self.aws(*args, creds=creds, check=False)
        assert res.returncode != 0, f"{' '.join(args)} unexpectedly succeeded: {res.stdout}"
        err = res.stderr
        marker = "An error occurred ("
        assert marker in err, f"no service error in: {err}"
        return err.split(marker, 1)[1].split(")", 1)[0]

    def admin(self, *args, check=True):
        """Runs `ironbark admin --data-dir DIR ...`; returns parsed JSON."""
        res = subprocess.run(
            [str(ironbark_bin()), "admin", "--data-dir", str(self.data_dir), *args],
            capture_output=True, text=True, timeout=60,
        )
        if not check:
            return res
        assert res.returncode == 0, f"admin {' '.join(args)} failed: {res.stderr}"
        return json.loads(res.stdout)

    def new_account(self, prefix="acct") -> dict:
        """A fresh account; its credentials as `ironbark admin` prints them."""
        creds = self.admin("account", "create", unique(prefix))
        return creds

    # ---- hand-made requests ----------------------------------------------

    def send(self, method="POST", path="/", query="", body=b"", headers=None):
        """Sends one raw HTTP request; returns (status, body bytes)."""
        url = f"http://{self.host}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, data=body if method == "POST" else None,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def send_v4(self, params, creds=None, path="/", region=REGION, now=None,
                tamper=None, method="POST"):
        """Signs a Query API request with botocore's SigV4Auth and sends it.
        `now` (a naive UTC datetime) fixes the signing clock; `tamper`
        rewrites the body after signing."""
        creds = creds or self.admin_creds()
        body = urllib.parse.urlencode(params).encode()
        url = f"http://{self.host}{path}"
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        if method == "GET":
            url = f"{url}?{body.decode()}"
            body = b""
            headers = {}
        req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=headers)
        auth = botocore.auth.SigV4Auth(
            botocore.credentials.Credentials(creds["access_key_id"], creds["secret_access_key"]),
            "ec2", region)
        ctx = (mock_clock(now) if now is not None else contextlib.nullcontext())
        with ctx:
            auth.add_auth(req)
        prepared = req.prepare()
        data = prepared.body or b""
        if isinstance(data, str):
            data = data.encode()
        if tamper:
            data = tamper(data)
        # urllib sets Content-Length for what is actually sent (it is not signed).
        sent_headers = {k: v for k, v in prepared.headers.items()
                        if k.lower() != "content-length"}
        parsed = urllib.parse.urlsplit(prepared.url)
        return self.send(method, parsed.path, parsed.query, data, sent_headers)

    def send_v2(self, params, creds=None, secret=None, timestamp=None, tamper=None,
                path="/"):
        """Signs like euca2ools (SigV2, HmacSHA256) and POSTs the form."""
        creds = creds or self.admin_creds()
        ts = timestamp or datetime.datetime.now(datetime.timezone.utc)
        p = dict(params)
        p.update({
            "AWSAccessKeyId": creds["access_key_id"],
            "SignatureVersion": "2",
            "SignatureMethod": "HmacSHA256",
            "Timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
        p.setdefault("Version", API_VERSION)
        p["Signature"] = sign_v2(p, secret or creds["secret_access_key"], self.host, path)
        if tamper:
            p = tamper(p)
        body = "&".join(f"{q(k)}={q(v)}" for k, v in p.items()).encode()
        return self.send("POST", path, "", body,
                         {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def q(s) -> str:
    """RFC 3986 unreserved-set percent-encoding, as SigV2 requires."""
    return urllib.parse.quote(str(s), safe="-_.~")


def sign_v2(params: dict, secret: str, host: str, path="/") -> str:
    canon = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(params.items()))
    to_sign = f"POST\n{host.lower()}\n{path}\n{canon}"
    mac = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


@contextlib.contextmanager
def mock_clock(now: datetime.datetime):
    """Makes botocore's signer believe it is `now` (naive UTC)."""
    from unittest import mock
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: now):
        yield


# ---- XML --------------------------------------------------------------------

def ec2_ns(version=API_VERSION) -> str:
    return f"http://ec2.amazonaws.com/doc/{version}/"


def parse_xml(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def error_code(body: bytes) -> str:
    root = parse_xml(body)
    assert root.tag == "Response", body
    return root.find("./Errors/Error/Code").text


# ---- error assertions ---------------------------------------------------------

@contextlib.contextmanager
def raises_code(code: str):
    """Expects the block to fail with the given EC2 error code."""
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        yield ei
    got = ei.value.response["Error"]["Code"]
    assert got == code, f"expected {code}, got {got}: {ei.value}"


def creds_of(d: dict) -> dict:
    return {"access_key_id": d["access_key_id"], "secret_access_key": d["secret_access_key"]}


# ---- key tools ------------------------------------------------------------------

def run(cmd, input=None, check=True, cwd=None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, input=input, capture_output=True, cwd=cwd, timeout=60)
    if check:
        assert res.returncode == 0, f"{cmd} failed: {res.stderr!r}"
    return res


def openssl_digest_hex(output: bytes) -> str:
    """The colon-separated hex of `openssl sha1 -c` / `md5 -c` output."""
    return output.decode().strip().rsplit("= ", 1)[1].strip()


# ---- fixtures -------------------------------------------------------------------

@contextlib.contextmanager
def running_cloud(config: str | None = None):
    """`config`: the text of an operator configuration file (KEY="value"
    lines) given to `ironbark up --config`."""
    root = Path(tempfile.mkdtemp(prefix="ironbark-bb-"))
    c = Cloud(root, config)
    try:
        c.start()
        yield c
    finally:
        try:
            c.kill9()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cloud():
    """A cloud shared by one test module; tests keep to fresh accounts/names."""
    with running_cloud() as c:
        yield c


@pytest.fixture
def fresh_cloud():
    """A cloud of the test's own, for stop/restart tests."""
    with running_cloud() as c:
        yield c


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture
def account(cloud):
    """A fresh account in the module's cloud: (creds, boto3 client)."""
    creds = cloud.new_account()
    return creds, cloud.client(creds_of(creds))


@pytest.fixture
def admin(cloud):
    return cloud.client()


@pytest.fixture(scope="session")
def test_image(tmp_path_factory):
    """The guest image the VM tests boot, built once per session (from the
    Debian package cache, see vmcloud.build_test_image)."""
    from vmcloud import build_test_image

    return build_test_image(tmp_path_factory.mktemp("image"))
