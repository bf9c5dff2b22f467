//! The real host network, inside network namespaces this test creates:
//! the CC's bridges, dnsmasq and nftables table are built by
//! [`LinuxHostNet`] in one namespace, a "guest" in a second namespace is
//! cabled to a segment bridge by a veth pair, gets its planned address by
//! DHCP (busybox `udhcpc`) and reads its instance id from
//! 169.254.169.254 through the DNAT. Then the plan shrinks and everything
//! goes away again.
//!
//! Needs root, `ip`, `nft`, `dnsmasq`, `busybox` (for `udhcpc`) and `curl`
//! (busybox's `wget -T` crashes in Debian 12's build); runs only with
//! `IRONBARK_NET_TESTS=1`. Addresses are documentation ones and never leave
//! the namespaces. A guard removes the namespaces and kills the dnsmasq
//! processes even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ironbark_cc::testdata::instance;
use ironbark_cc::{
    ClusterController, FakeNode, HostNet, LinuxHostNet, NodeLink, metadata, netns, plan, reconcile,
};
use ironbark_cluster_api::{Segment, ZoneDesired};

fn enabled() -> bool {
    std::env::var("IRONBARK_NET_TESTS").is_ok_and(|v| v == "1")
}

/// Runs a command to completion; its stdout, or a panic with its stderr.
fn sh(args: &[&str]) -> String {
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

/// Owns the namespaces and state directory; tears all down on drop.
struct Guard {
    namespaces: Vec<String>,
    state: PathBuf,
}

impl Guard {
    fn dnsmasq_pids(&self) -> Vec<i32> {
        let Ok(dirs) = std::fs::read_dir(self.state.join("dhcp")) else {
            return vec![];
        };
        dirs.flatten()
            .filter_map(|d| std::fs::read_to_string(d.path().join("pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.state.to_string_lossy())
                })
            })
            .collect()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for pid in self.dnsmasq_pids() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let hosts = ironbark_cc::CcConfig::new("z", "t", &self.state).dhcp_hosts_dir;
        let _ = std::fs::remove_dir_all(hosts);
    }
}

fn segment(group: &str, bridge: &str, subnet: &str, gateway: &str, tag: u32) -> Segment {
    Segment {
        group_id: group.into(),
        tag,
        bridge: bridge.into(),
        subnet: subnet.into(),
        gateway: gateway.into(),
        rules: Vec::new(),
    }
}

fn zone(generation: u64, with_db: bool, extra: bool) -> ZoneDesired {
    let mut z = ZoneDesired {
        generation,
        node_poll_secs: None,
        segments: vec![segment(
            "sg-web",
            "ibr0",
            "198.51.100.0/28",
            "198.51.100.1",
            10,
        )],
        instances: vec![instance(
            "i-0000abcd",
            "sg-web",
            "ibr0",
            "198.51.100.2",
            "d0:0d:00:00:ab:cd",
            "nc1",
        )],
    };
    if with_db {
        z.segments.push(segment(
            "sg-db",
            "ibr1",
            "198.51.100.16/28",
            "198.51.100.17",
            11,
        ));
        z.instances.push(instance(
            "i-0000dbdb",
            "sg-db",
            "ibr1",
            "198.51.100.18",
            "d0:0d:00:00:db:db",
            "nc1",
        ));
    }
    if extra {
        z.instances.push(instance(
            "i-0000eeee",
            "sg-web",
            "ibr0",
            "198.51.100.3",
            "d0:0d:00:00:ee:ee",
            "nc1",
        ));
    }
    z
}

fn pid_of(state: &Path, bridge: &str) -> i32 {
    std::fs::read_to_string(state.join("dhcp").join(bridge).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `udhcpc`'s hook: sets the leased address and route, prints the lease.
const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  bound|renew)\n\
    ip addr add \"$ip/$mask\" dev \"$interface\"\n\
    ip route add default via \"${router%% *}\" dev \"$interface\"\n\
    echo \"LEASE ip=$ip mask=$mask router=$router hostname=$hostname\" ;;\n\
esac\n\
exit 0\n";

#[tokio::test]
async fn a_guest_gets_its_lease_and_metadata_through_the_real_host_network() {
    if !enabled() {
        eprintln!("skipped: set IRONBARK_NET_TESTS=1 (as root) to run");
        return;
    }
    let id = std::process::id();
    let cc_ns = format!("ibcc-{id}");
    let guest_ns = format!("ibguest-{id}");
    let state = std::env::temp_dir().join(format!("ironbark-cc-net-{id}"));
    let guard = Guard {
        namespaces: vec![cc_ns.clone(), guest_ns.clone()],
        state: state.clone(),
    };
    std::fs::create_dir_all(&state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // A private state directory: dnsmasq's host lists live elsewhere.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    sh(&["ip", "netns", "add", &cc_ns]);
    sh(&["ip", "netns", "add", &guest_ns]);
    sh(&["ip", "-n", &cc_ns, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &guest_ns, "link", "set", "lo", "up"]);

    let mut cfg = ironbark_cc::CcConfig::new("zone-a", "t0ken", &state);
    cfg.netns = Some(cc_ns.clone());
    cfg.nodes = vec![("nc1".into(), "http://nc1.invalid".into())];
    let net = Arc::new(LinuxHostNet::new(&cfg));
    let node = Arc::new(FakeNode::new("nc1"));
    let link = node.clone();
    let cc = ClusterController::with_parts(cfg.clone(), net.clone(), |_, _| {
        link.clone() as Arc<dyn NodeLink>
    })
    .unwrap();
    let listener = netns::bind_tokio(cfg.netns.as_deref(), cfg.metadata_listen).unwrap();
    let server = tokio::spawn(metadata::serve(cc.metadata(), listener));

    // Apply: two segments, their bridges, DHCP servers and table.
    let report = cc.apply(zone(1, true, false)).await.unwrap();
    assert_eq!(report.generation, 1);
    assert_eq!(node.running(), ["i-0000abcd", "i-0000dbdb"]);
    let links = sh(&["ip", "-n", &cc_ns, "-br", "addr", "show", "type", "bridge"]);
    assert!(
        links.contains("ibr0") && links.contains("198.51.100.1/28"),
        "{links}"
    );
    assert!(
        links.contains("ibr1") && links.contains("198.51.100.17/28"),
        "{links}"
    );
    let table = sh(&[
        "ip", "netns", "exec", &cc_ns, "nft", "-a", "list", "table", "ip", "ironbark",
    ]);
    assert!(
        table.contains(
            "iifname \"ibr0\" ip daddr 169.254.169.254 tcp dport 80 dnat to 198.51.100.1:8777"
        ),
        "{table}"
    );
    let planned = plan(&zone(1, true, false), &cfg);
    assert!(
        table.contains(&format!(
            "comment \"ironbark:{}\"",
            planned.nft.as_ref().unwrap().fingerprint
        )),
        "{table}"
    );
    let web_pid = pid_of(&state, "ibr0");
    assert!(Path::new(&format!("/proc/{web_pid}")).exists());

    // The same plan again: the real host is found to be as planned.
    assert_eq!(
        reconcile(net.as_ref(), &planned).await.unwrap(),
        Vec::<String>::new()
    );

    // A guest on ibr0 with the instance's MAC.
    sh(&[
        "ip", "link", "add", "vguest0", "netns", &cc_ns, "type", "veth", "peer", "name", "eth0",
        "netns", &guest_ns,
    ]);
    sh(&[
        "ip", "-n", &cc_ns, "link", "set", "vguest0", "master", "ibr0", "up",
    ]);
    sh(&[
        "ip",
        "-n",
        &guest_ns,
        "link",
        "set",
        "eth0",
        "address",
        "d0:0d:00:00:ab:cd",
        "up",
    ]);
    let script = state.join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lease = sh(&[
        "ip",
        "netns",
        "exec",
        &guest_ns,
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-t",
        "10",
        "-T",
        "1",
        "-s",
        &script.to_string_lossy(),
    ]);
    assert!(
        lease
            .contains("LEASE ip=198.51.100.2 mask=28 router=198.51.100.1 hostname=ip-198-51-100-2"),
        "{lease}"
    );

    // Metadata through the redirect, answered for this guest's address and
    // for no other address on the segment.
    sh(&[
        "ip",
        "-n",
        &guest_ns,
        "addr",
        "add",
        "198.51.100.9/28",
        "dev",
        "eth0",
    ]);
    let ns = guest_ns.clone();
    let fetch = move |from: &str, path: &str| {
        let url = format!("http://169.254.169.254{path}");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "curl",
                "-sS",
                "-f",
                "--max-time",
                "5",
                "--interface",
                from,
                &url,
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "curl {url} from {from}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The metadata server runs on this runtime: fetch off it.
    let got = tokio::task::spawn_blocking(move || {
        (
            fetch("198.51.100.2", "/latest/meta-data/instance-id"),
            fetch("198.51.100.2", "/latest/meta-data/local-ipv4"),
            fetch("198.51.100.2", "/latest/meta-data/no-such-thing"),
            fetch("198.51.100.9", "/latest/meta-data/instance-id"),
        )
    })
    .await
    .unwrap();
    assert_eq!(got.0, (true, "i-0000abcd".to_string()));
    assert_eq!(got.1, (true, "198.51.100.2".to_string()));
    assert!(!got.2.0, "an unknown path must fail");
    assert!(
        !got.3.0,
        "an address that is no instance's must get nothing"
    );

    // A new instance only rewrites the host list: same dnsmasq, SIGHUP.
    cc.apply(zone(2, true, true)).await.unwrap();
    assert_eq!(pid_of(&state, "ibr0"), web_pid);
    let hosts = std::fs::read_to_string(cfg.dhcp_hosts_dir.join("ibr0.hosts")).unwrap();
    assert!(hosts.contains("d0:0d:00:00:ee:ee,198.51.100.3"), "{hosts}");
    // dnsmasq (no longer root) reread it: the new MAC gets its address,
    // though the state directory is 0700.
    sh(&["ip", "-n", &guest_ns, "addr", "flush", "dev", "eth0"]);
    sh(&[
        "ip",
        "-n",
        &guest_ns,
        "link",
        "set",
        "eth0",
        "address",
        "d0:0d:00:00:ee:ee",
    ]);
    let script_path = script.to_string_lossy().into_owned();
    let ns = guest_ns.clone();
    let lease = tokio::task::spawn_blocking(move || {
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            &script_path,
        ])
    })
    .await
    .unwrap();
    assert!(lease.contains("LEASE ip=198.51.100.3 "), "{lease}");

    // Removing a segment removes its bridge and its DHCP server.
    let db_pid = pid_of(&state, "ibr1");
    cc.apply(zone(3, false, true)).await.unwrap();
    let links = sh(&["ip", "-n", &cc_ns, "-br", "link", "show", "type", "bridge"]);
    assert!(links.contains("ibr0") && !links.contains("ibr1"), "{links}");
    assert!(!state.join("dhcp/ibr1").exists());
    assert!(!is_dnsmasq(db_pid), "the segment's dnsmasq must be gone");

    // An empty zone leaves nothing of the CC behind.
    cc.apply(ZoneDesired {
        generation: 4,
        node_poll_secs: None,
        segments: vec![],
        instances: vec![],
    })
    .await
    .unwrap();
    let links = sh(&["ip", "-n", &cc_ns, "-br", "link", "show", "type", "bridge"]);
    assert!(links.trim().is_empty(), "{links}");
    let tables = sh(&["ip", "netns", "exec", &cc_ns, "nft", "list", "tables"]);
    assert!(!tables.contains("ironbark"), "{tables}");
    assert!(!is_dnsmasq(web_pid));
    assert!(net.dhcp_servers().await.unwrap().is_empty());

    server.abort();
    drop(guard);
    assert!(!Path::new(&format!("/run/netns/{cc_ns}")).exists());
}

/// Whether `pid` is still a live dnsmasq (zombies do not count).
fn is_dnsmasq(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("dnsmasq"))
}

#[test]
fn namespace_names_are_checked() {
    let addr = "127.0.0.1:0".parse().unwrap();
    assert!(netns::bind_tcp(Some("../x"), addr).is_err());
    assert!(netns::bind_tcp(Some(""), addr).is_err());
    assert!(netns::bind_tcp(None, addr).is_ok());
    let _ = Duration::ZERO;
}
