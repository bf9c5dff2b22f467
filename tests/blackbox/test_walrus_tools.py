"""Other S3 tools against Walrus with the admin's key: s3cmd (from the
venv) and rclone (a host package); each test skips if its tool is
missing. Plus virtual-host-style addressing, which needs WALRUS_DOMAINS in
the operator config."""

import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from s3util import (MiB, bucket_name, env_without_aws, http, s3_client, s3_error, sign_v4,
                    start_with_config, tool)


def run_tool(cmd, cwd, timeout=60):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                         env=env_without_aws())
    assert res.returncode == 0, f"{cmd[:3]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_s3cmd_smoke(cloud, tmp_path):
    s3cmd = tool("s3cmd")
    creds = cloud.admin_creds()
    cfg = tmp_path / "s3cfg"
    host = f"127.0.0.1:{cloud.walrus_port}"
    cfg.write_text(
        "[default]\n"
        f"access_key = {creds['access_key_id']}\n"
        f"secret_key = {creds['secret_access_key']}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        "use_https = False\nbucket_location = eucalyptus\n"
        "signature_v2 = False\ncheck_ssl_certificate = False\n")
    base = [s3cmd, "-c", str(cfg), f"--host={host}", f"--host-bucket={host}", "--no-ssl",
            f"--access_key={creds['access_key_id']}",
            f"--secret_key={creds['secret_access_key']}", "--region=eucalyptus"]
    name = bucket_name("s3cmd")
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(2 * MiB + 7))
    run_tool(base + ["mb", f"s3://{name}"], tmp_path)
    assert f"s3://{name}" in run_tool(base + ["ls"], tmp_path)
    run_tool(base + ["put", str(src), f"s3://{name}/dir/data.bin"], tmp_path)
    run_tool(base + ["put", str(src), f"s3://{name}/top.bin"], tmp_path)
    out = run_tool(base + ["ls", f"s3://{name}/"], tmp_path)
    assert "DIR" in out and f"s3://{name}/dir/" in out and f"s3://{name}/top.bin" in out
    out = run_tool(base + ["ls", "-r", f"s3://{name}"], tmp_path)
    assert f"s3://{name}/dir/data.bin" in out
    back = tmp_path / "back.bin"
    run_tool(base + ["get", f"s3://{name}/dir/data.bin", str(back)], tmp_path)
    assert back.read_bytes() == src.read_bytes()
    info = run_tool(base + ["info", f"s3://{name}/top.bin"], tmp_path)
    assert hashlib.md5(src.read_bytes()).hexdigest() in info
    # s3cmd's own multipart upload (15 MiB chunks -> 2 parts for 16 MiB).
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(16 * MiB))
    run_tool(base + ["put", str(big), f"s3://{name}/big.bin"], tmp_path)
    run_tool(base + ["get", f"s3://{name}/big.bin", str(tmp_path / "big.back")], tmp_path)
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()
    assert s3_client(cloud).head_object(Bucket=name, Key="big.bin")["ETag"].endswith('-2"')
    for k in ("dir/data.bin", "top.bin", "big.bin"):
        run_tool(base + ["del", f"s3://{name}/{k}"], tmp_path)
    run_tool(base + ["rb", f"s3://{name}"], tmp_path)
    assert f"s3://{name}" not in run_tool(base + ["ls"], tmp_path)


def test_s3cmd_signature_v2(cloud, tmp_path):
    """s3cmd signing with SigV2 (`signature_v2 = True`): bucket-level
    requests (mb, ls of a bucket, rb) as well as objects."""
    s3cmd = tool("s3cmd")
    creds = cloud.admin_creds()
    cfg = tmp_path / "s3cfg"
    host = f"127.0.0.1:{cloud.walrus_port}"
    cfg.write_text(
        "[default]\n"
        f"access_key = {creds['access_key_id']}\n"
        f"secret_key = {creds['secret_access_key']}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        "use_https = False\nbucket_location = eucalyptus\n"
        "signature_v2 = True\ncheck_ssl_certificate = False\n")
    base = [s3cmd, "-c", str(cfg), "--signature-v2"]
    name = bucket_name("s3v2")
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(100_000))
    run_tool(base + ["mb", f"s3://{name}"], tmp_path)
    assert f"s3://{name}" in run_tool(base + ["ls"], tmp_path)
    run_tool(base + ["put", str(src), f"s3://{name}/dir/a b.bin"], tmp_path)
    out = run_tool(base + ["ls", f"s3://{name}"], tmp_path)
    assert f"s3://{name}/dir/" in out
    assert f"s3://{name}/dir/a b.bin" in run_tool(base + ["ls", "-r", f"s3://{name}"], tmp_path)
    back = tmp_path / "back.bin"
    run_tool(base + ["get", f"s3://{name}/dir/a b.bin", str(back)], tmp_path)
    assert back.read_bytes() == src.read_bytes()
    run_tool(base + ["del", f"s3://{name}/dir/a b.bin"], tmp_path)
    run_tool(base + ["rb", f"s3://{name}"], tmp_path)
    assert f"s3://{name}" not in run_tool(base + ["ls"], tmp_path)


def test_rclone_smoke(cloud, tmp_path):
    rclone = tool("rclone")
    creds = cloud.admin_creds()
    cfg = tmp_path / "rclone.conf"
    cfg.write_text(
        "[walrus]\ntype = s3\nprovider = Other\nenv_auth = false\n"
        f"access_key_id = {creds['access_key_id']}\n"
        f"secret_access_key = {creds['secret_access_key']}\n"
        f"endpoint = http://127.0.0.1:{cloud.walrus_port}\n"
        "region = eucalyptus\nforce_path_style = true\n")
    base = [rclone, "--config", str(cfg), "--retries", "1", "--low-level-retries", "1"]
    name = bucket_name("rclone")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b with space.bin").write_bytes(os.urandom(300_000))
    run_tool(base + ["mkdir", f"walrus:{name}"], tmp_path)
    assert name in run_tool(base + ["lsd", "walrus:"], tmp_path)
    run_tool(base + ["copy", str(src), f"walrus:{name}/tree"], tmp_path)
    run_tool(base + ["copyto", str(src / "a.txt"), f"walrus:{name}/single.txt"], tmp_path)
    listing = run_tool(base + ["lsf", "-R", f"walrus:{name}"], tmp_path).split()
    assert "single.txt" in listing and "tree/a.txt" in listing
    assert "tree/sub/b with space.bin" in run_tool(base + ["lsf", "-R", f"walrus:{name}"],
                                                   tmp_path)
    assert run_tool(base + ["cat", f"walrus:{name}/single.txt"], tmp_path) == "alpha\n"
    dst = tmp_path / "dst"
    run_tool(base + ["copy", f"walrus:{name}/tree", str(dst)], tmp_path)
    assert (dst / "sub" / "b with space.bin").read_bytes() == (
        src / "sub" / "b with space.bin").read_bytes()
    # check compares sizes and MD5 hashes (the ETags) on both sides.
    run_tool(base + ["check", str(src), f"walrus:{name}/tree"], tmp_path)
    run_tool(base + ["deletefile", f"walrus:{name}/single.txt"], tmp_path)
    run_tool(base + ["purge", f"walrus:{name}/tree"], tmp_path)
    run_tool(base + ["rmdir", f"walrus:{name}"], tmp_path)
    assert name not in run_tool(base + ["lsd", "walrus:"], tmp_path)


def test_virtual_host_style():
    root = Path(tempfile.mkdtemp(prefix="ironbark-bb-"))
    cloud = start_with_config(root, 'WALRUS_DOMAINS="s3.test"\n')
    try:
        s3 = s3_client(cloud)
        name = bucket_name("vhost")
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="dir/obj 1", Body=b"virtual", ACL="public-read")
        host = f"{name}.s3.test:{cloud.walrus_port}"
        key_path = "/dir/" + urllib.parse.quote("obj 1")
        # Signed GET and listing addressed by Host alone.
        headers = sign_v4(cloud, "GET", f"http://{host}{key_path}")
        status, _, body = http(cloud, "GET", key_path, headers, host=host)
        assert (status, body) == (200, b"virtual")
        headers = sign_v4(cloud, "GET", f"http://{host}/?list-type=2")
        status, _, body = http(cloud, "GET", "/?list-type=2", headers, host=host)
        assert status == 200 and b"<Key>dir/obj 1</Key>" in body
        # Anonymous GET of the public object, virtual-host style.
        status, _, body = http(cloud, "GET", key_path, host=host)
        assert (status, body) == (200, b"virtual")
        # Signed PUT, virtual-host style; path style sees it.
        headers = sign_v4(cloud, "PUT", f"http://{host}/vput", {"Content-Length": "2"})
        status, _, body = http(cloud, "PUT", "/vput", headers, b"vh", host=host)
        assert status == 200, body
        assert s3.get_object(Bucket=name, Key="vput")["Body"].read() == b"vh"
        # Path style still works with the domain set, and the bare domain
        # is the service (ListBuckets).
        headers = sign_v4(cloud, "GET", f"http://s3.test:{cloud.walrus_port}/")
        status, _, body = http(cloud, "GET", "/", headers, host=f"s3.test:{cloud.walrus_port}")
        assert status == 200 and f"<Name>{name}</Name>".encode() in body
        with s3_error("NoSuchKey", 404):
            s3.get_object(Bucket=name, Key="dir/missing")
    finally:
        cloud.kill9()
        shutil.rmtree(root, ignore_errors=True)

