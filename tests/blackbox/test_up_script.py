"""The README's first command, `scripts/up.sh`, run as written (with the
dev profile so the suite does not build a second time): it installs the
host packages, builds, installs /usr/local/bin/ironbark and starts a cloud
that the unmodified AWS CLI reaches through DIR/admin/."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="up.sh installs packages and /usr/local/bin/ironbark: needs root")


def test_up_script_starts_a_cloud_the_cli_reaches():
    root = Path(tempfile.mkdtemp(prefix="ibup-"))
    port = free_port()
    log = open(root / "up.log", "wb")
    env = dict(os.environ, IRONBARK_UP_PROFILE="dev")
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "up.sh"), "--data-dir", str(root / "data"), "--listen", f"127.0.0.1:{port}",
         "--walrus-listen", f"127.0.0.1:{free_port()}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        creds = root / "data" / "admin" / "credentials"
        deadline = time.time() + 600
        out = None
        while time.time() < deadline:
            assert proc.poll() is None, (root / "up.log").read_text(errors="replace")[-3000:]
            if creds.exists():
                env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
                env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds),
                           AWS_CONFIG_FILE=str(root / "data" / "admin" / "config"))
                aws = Path(os.sys.executable).parent / "aws"
                res = subprocess.run([str(aws), "--profile", "ironbark-admin", "ec2", "describe-regions",
                                      "--output", "text"], env=env, capture_output=True, text=True)
                if res.returncode == 0:
                    out = res.stdout
                    break
            time.sleep(1)
        assert out and "eucalyptus" in out, (root / "up.log").read_text(errors="replace")[-3000:]
        assert Path("/usr/local/bin/ironbark").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
