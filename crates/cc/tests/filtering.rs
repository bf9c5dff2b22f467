//! Security-group filtering, public addresses and elastic-IP moves on the
//! real data path, one host: a CC namespace with two segment bridges and a
//! public interface, three "instances" (namespaces cabled to the bridges
//! with their planned addresses) and an "internet" namespace on the public
//! link. The CC's side is built only by [`reconcile`] over
//! [`LinuxHostNet`]; the test changes the zone as the CLC would and checks
//! what gets through:
//!
//! - instances of one group reach each other, of different groups not
//!   until a source-group rule allows it (also through public addresses);
//! - a CIDR rule naming an instance's public address admits that
//!   instance's traffic (the original's SNAT-ordering bug);
//! - tcp from the internet to a public address works once authorized and
//!   stops at the revoke, an established connection included, each change
//!   enforced within a second;
//! - instances' outbound traffic leaves with their public address;
//! - an elastic IP moves to another instance and back, with no stale
//!   address or mapping left.
//!
//! Needs root, `ip`, `nft`, `conntrack`, `socat` and `busybox` (`ping`);
//! runs only with `IRONBARK_NET_TESTS=1`. Addresses are documentation
//! ones; a guard kills the servers and removes the namespaces even when an
//! assertion fails.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironbark_cc::testdata::{instance, rule};
use ironbark_cc::{CcConfig, LinuxHostNet, plan, reconcile};
use ironbark_cluster_api::{RuleProtocol, RuleSourceSpec, Segment, ZoneDesired};

mod common;
use common::*;

fn segment(group: &str, bridge: &str, subnet: &str, gw: &str, tag: u32) -> Segment {
    Segment {
        group_id: group.into(),
        tag,
        bridge: bridge.into(),
        subnet: subnet.into(),
        gateway: gw.into(),
        rules: Vec::new(),
    }
}

fn zone() -> ZoneDesired {
    let mut z = ZoneDesired {
        generation: 1,
        node_poll_secs: None,
        segments: vec![
            segment("sg-web", "ibr0", "198.51.100.0/28", "198.51.100.1", 10),
            segment("sg-db", "ibr1", "198.51.100.16/28", "198.51.100.17", 11),
        ],
        instances: vec![
            instance(
                "i-0000aaa1",
                "sg-web",
                "ibr0",
                "198.51.100.2",
                "d0:0d:00:00:aa:a1",
                "nc1",
            ),
            instance(
                "i-0000aaa2",
                "sg-web",
                "ibr0",
                "198.51.100.3",
                "d0:0d:00:00:aa:a2",
                "nc1",
            ),
            instance(
                "i-0000dbd1",
                "sg-db",
                "ibr1",
                "198.51.100.18",
                "d0:0d:00:00:db:d1",
                "nc1",
            ),
        ],
    };
    for (i, p) in z
        .instances
        .iter_mut()
        .zip(["203.0.113.10", "203.0.113.11", "203.0.113.20"])
    {
        i.public_ip = Some(p.into());
    }
    z
}

/// Reconciles and returns how long it took to enforce.
async fn apply(net: &LinuxHostNet, cfg: &CcConfig, z: &ZoneDesired) -> Duration {
    let p = plan(z, cfg);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let t = Instant::now();
    reconcile(net, &p).await.unwrap();
    t.elapsed()
}

#[tokio::test]
async fn groups_rules_public_addresses_and_elastic_ips_on_the_real_data_path() {
    if !enabled() {
        eprintln!("skipped: set IRONBARK_NET_TESTS=1 (as root) to run");
        return;
    }
    let id = std::process::id();
    let [cc, inet, web1, web2, db1] =
        ["cc", "inet", "w1", "w2", "db"].map(|n| format!("ibf{n}-{id}"));
    let state = std::env::temp_dir().join(format!("ironbark-cc-filter-{id}"));
    let mut guard = Guard {
        namespaces: vec![
            cc.clone(),
            inet.clone(),
            web1.clone(),
            web2.clone(),
            db1.clone(),
        ],
        children: vec![],
        state: state.clone(),
    };
    for ns in &guard.namespaces {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The public link: the CC's pub0 and the internet host, which reaches
    // the public addresses on-link (the CC answers ARP for its /32s).
    sh(&[
        "ip", "link", "add", "pub0", "netns", &cc, "type", "veth", "peer", "name", "eth0", "netns",
        &inet,
    ]);
    sh(&[
        "ip",
        "-n",
        &cc,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "pub0",
    ]);
    sh(&["ip", "-n", &cc, "link", "set", "pub0", "up"]);
    sh(&[
        "ip",
        "-n",
        &inet,
        "addr",
        "add",
        "192.0.2.2/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &inet, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &inet,
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "eth0",
    ]);

    let mut cfg = CcConfig::new("zone-a", "t0ken", &state);
    cfg.netns = Some(cc.clone());
    cfg.public_interface = Some("pub0".into());
    cfg.public_ips = vec![([203, 0, 113, 0].into(), [203, 0, 113, 255].into())];
    let net = LinuxHostNet::new(&cfg);
    let mut z = zone();
    apply(&net, &cfg, &z).await;
    // Applying the same plan again finds nothing to do on the real host.
    assert_eq!(
        reconcile(&net, &plan(&z, &cfg)).await.unwrap(),
        Vec::<String>::new()
    );

    attach(&cc, "ibr0", &web1, "vw1", "198.51.100.2/28", "198.51.100.1");
    attach(&cc, "ibr0", &web2, "vw2", "198.51.100.3/28", "198.51.100.1");
    attach(
        &cc,
        "ibr1",
        &db1,
        "vdb",
        "198.51.100.18/28",
        "198.51.100.17",
    );
    guard.children.push(server(&web1, 8080, "web1"));
    guard.children.push(server(&web2, 8080, "web2"));
    guard.children.push(server(&db1, 5432, "db1"));
    guard.children.push(server(&inet, 9000, "inet"));
    for (ns, port) in [(&web1, 8080), (&web2, 8080), (&db1, 5432), (&inet, 9000)] {
        wait_listening(ns, port);
    }

    // One group: free. Different groups: nothing, privately or publicly.
    assert!(ping(&web1, "198.51.100.3"));
    assert!(
        ping(&web1, "203.0.113.11"),
        "a member through its public address"
    );
    assert!(!ping(&web1, "198.51.100.18"));
    assert!(!ping(&web1, "203.0.113.20"));
    assert!(!ping(&db1, "198.51.100.2"));
    assert_eq!(tcp(&web1, "198.51.100.18", 5432), None);
    // Nothing from the internet by default.
    assert_eq!(tcp(&inet, "203.0.113.10", 8080), None);
    assert!(!ping(&inet, "203.0.113.10"));
    // Outbound traffic leaves with the instance's public address.
    assert_eq!(
        tcp(&web1, "192.0.2.2", 9000).as_deref(),
        Some("inet from 203.0.113.10")
    );

    // sg-db lets sg-web ping it, and 5432 from web1's public address only.
    z.generation += 1;
    z.segments[1].rules = vec![
        rule(
            RuleProtocol::Icmp,
            8,
            -1,
            RuleSourceSpec::Group("sg-web".into()),
        ),
        rule(
            RuleProtocol::Tcp,
            5432,
            5432,
            RuleSourceSpec::Cidr("203.0.113.10/32".into()),
        ),
    ];
    let took = apply(&net, &cfg, &z).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(ping(&web1, "198.51.100.18"));
    assert!(ping(&web2, "203.0.113.20"), "through db's public address");
    assert!(
        !ping(&db1, "198.51.100.2"),
        "the rule is sg-db's, not sg-web's"
    );
    assert!(
        tcp(&web1, "198.51.100.18", 5432).is_some_and(|s| s.starts_with("db1")),
        "a rule naming web1's public address admits web1"
    );
    // Through db's public address, web1 arrives as its public address.
    assert_eq!(
        tcp(&web1, "203.0.113.20", 5432).as_deref(),
        Some("db1 from 203.0.113.10")
    );
    assert_eq!(tcp(&web2, "198.51.100.18", 5432), None);

    // The internet gets 8080 on sg-web once authorized.
    z.generation += 1;
    z.segments[0].rules = vec![rule(
        RuleProtocol::Tcp,
        8080,
        8080,
        RuleSourceSpec::Cidr("192.0.2.0/24".into()),
    )];
    let took = apply(&net, &cfg, &z).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8080).as_deref(),
        Some("web1 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.11", 8080).as_deref(),
        Some("web2 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.20", 5432),
        None,
        "sg-db did not allow it"
    );

    // An established connection, then the revoke: new connections and the
    // established one stop at once.
    let sink = state.join("received");
    let mut listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &web1,
            "socat",
            "-u",
            "TCP-LISTEN:8080,reuseaddr",
            &format!("CREATE:{}", sink.display()),
        ])
        .spawn()
        .unwrap();
    // web1's forking server holds 8080 too; stop it so this one gets it.
    guard.children[0].kill().unwrap();
    let _ = guard.children[0].wait();
    let _ = &mut listener;
    guard.children.push(listener);
    wait_listening(&web1, 8080);
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &inet,
            "socat",
            "-u",
            "-",
            "TCP:203.0.113.10:8080,connect-timeout=2",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_server = client.stdin.take().unwrap();
    guard.children.push(client);
    let received = || std::fs::read_to_string(&sink).unwrap_or_default();
    to_server.write_all(b"before\n").unwrap();
    to_server.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received().contains("before") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(received(), "before\n");

    z.generation += 1;
    z.segments[0].rules.clear();
    let took = apply(&net, &cfg, &z).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    to_server.write_all(b"after\n").unwrap();
    to_server.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        received(),
        "before\n",
        "the established connection must stop"
    );
    assert_eq!(tcp(&inet, "203.0.113.11", 8080), None);
    drop(to_server);

    // Elastic IP: 203.0.113.10 moves from web1 to web2 (web2's pool
    // address is released, web1 gets a fresh one), and back.
    guard.children.push(server(&web1, 8081, "web1"));
    guard.children.push(server(&web2, 8081, "web2"));
    z.generation += 1;
    z.segments[0].rules = vec![rule(
        RuleProtocol::Tcp,
        8081,
        8081,
        RuleSourceSpec::Cidr("0.0.0.0/0".into()),
    )];
    z.instances[0].public_ip = Some("203.0.113.50".into());
    z.instances[1].public_ip = Some("203.0.113.10".into());
    apply(&net, &cfg, &z).await;
    wait_listening(&web1, 8081);
    wait_listening(&web2, 8081);
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8081).as_deref(),
        Some("web2 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.50", 8081).as_deref(),
        Some("web1 from 192.0.2.2")
    );
    assert_eq!(tcp(&inet, "203.0.113.11", 8081), None);
    let addrs = sh(&["ip", "-n", &cc, "-br", "addr", "show", "dev", "pub0"]);
    assert!(
        addrs.contains("203.0.113.50/32") && !addrs.contains("203.0.113.11/32"),
        "{addrs}"
    );
    assert_eq!(
        tcp(&web2, "192.0.2.2", 9000).as_deref(),
        Some("inet from 203.0.113.10")
    );

    z.generation += 1;
    z.instances[0].public_ip = Some("203.0.113.10".into());
    z.instances[1].public_ip = Some("203.0.113.11".into());
    apply(&net, &cfg, &z).await;
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8081).as_deref(),
        Some("web1 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.11", 8081).as_deref(),
        Some("web2 from 192.0.2.2")
    );
    assert_eq!(tcp(&inet, "203.0.113.50", 8081), None);
    let nat = sh(&[
        "ip", "netns", "exec", &cc, "nft", "list", "map", "ip", "ironbark", "pub2priv",
    ]);
    assert!(!nat.contains("203.0.113.50"), "{nat}");

    // A CC clean restart: a new LinuxHostNet (no memory of what it loaded)
    // converges on the same host without reloading the table.
    let fresh = LinuxHostNet::new(&cfg);
    assert_eq!(
        reconcile(&fresh, &plan(&z, &cfg)).await.unwrap(),
        Vec::<String>::new()
    );

    // Everything goes with the last segment.
    let empty = ZoneDesired {
        generation: z.generation + 1,
        node_poll_secs: None,
        segments: vec![],
        instances: vec![],
    };
    apply(&net, &cfg, &empty).await;
    let addrs = sh(&["ip", "-n", &cc, "-br", "addr", "show", "dev", "pub0"]);
    assert!(!addrs.contains("203.0.113."), "{addrs}");
    drop(guard);
}
