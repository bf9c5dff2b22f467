//! Helpers the real-network tests share: commands, namespaces cabled to
//! bridges, ping and tcp probes, tiny servers, and a guard that removes
//! everything a test made, even when it fails.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

pub fn enabled() -> bool {
    std::env::var("IRONBARK_NET_TESTS").is_ok_and(|v| v == "1")
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Guard {
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
    pub state: std::path::PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let hosts = ironbark_cc::CcConfig::new("z", "t", &self.state).dhcp_hosts_dir;
        let _ = std::fs::remove_dir_all(hosts);
    }
}

/// Cables namespace `ns` to `bridge` in `cc` with `ip/len` and a default
/// route via `gw`.
pub fn attach(cc: &str, bridge: &str, ns: &str, port: &str, cidr: &str, gw: &str) {
    sh(&[
        "ip", "link", "add", port, "netns", cc, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    sh(&["ip", "-n", cc, "link", "set", port, "master", bridge, "up"]);
    sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", "eth0"]);
    sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
}

pub fn ping(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Connects from `ns` to `ip:port` and returns what the server said, or
/// `None` when nothing answered within a second.
pub fn tcp(ns: &str, ip: &str, port: u16) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "socat",
            "-T",
            "2",
            "-u",
            &format!("TCP:{ip}:{port},connect-timeout=1"),
            "-",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// A server in `ns` on `port` that tells each client its name and the
/// address the connection came from.
pub fn server(ns: &str, port: u16, name: &str) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "socat",
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            &format!("SYSTEM:echo {name} from $SOCAT_PEERADDR"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to 10 s) until something in `ns` listens on TCP `port`: a
/// fixed sleep after spawning a server was too short on a loaded machine.
pub fn wait_listening(ns: &str, port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    while std::time::Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hltn", &filter])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("nothing listens on {ns}:{port} after 10 s");
}
