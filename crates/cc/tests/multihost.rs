//! Several hosts, built from network namespaces: a CC host, two NC hosts
//! joined to it by an underlay switch, and an internet host on the CC's
//! public link. The real [`ClusterController`] (over [`LinuxHostNet`] in
//! the CC namespace) drives two real [`Node`]s, each with the
//! [`NetnsHypervisor`] instance driver and a [`LinuxSegNet`] in its NC
//! namespace, through in-process links (the HTTP hop is tested elsewhere).
//! Instances get their addresses by DHCP from the CC across the VXLAN
//! tunnels, and then:
//!
//! - two instances of one group on different NC hosts ping each other;
//! - instances of different groups cannot, until a source-group rule
//!   allows it;
//! - tcp from the internet to a public address works after the authorize
//!   and stops after the revoke;
//! - an elastic IP moves between instances on different hosts and back;
//! - when the instances go, the NCs' bridges and tunnels go too.
//!
//! Needs root, `ip`, `bridge`, `nft`, `dnsmasq`, `conntrack`, `socat` and
//! `busybox`; runs only with `IRONBARK_NET_TESTS=1`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ironbark_cc::testdata::{instance, rule};
use ironbark_cc::{CcConfig, ClusterController, LinkError, LinuxHostNet, NodeLink};
use ironbark_cluster_api::{InstanceDesired, RuleProtocol, RuleSourceSpec, Segment, ZoneDesired};
use ironbark_nc::segnet::LinuxSegNet;
use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{NetnsHypervisor, NetnsHypervisorConfig, Node, NodeConfig};
use ironbark_node_api::{
    DesiredInstances, DesiredVolumes, NodeReport, TerminateAck, VmState, VolumesReport,
};

/// The CC talks to the node objects directly.
struct Local(Arc<Node>);

#[async_trait]
impl NodeLink for Local {
    async fn apply(&self, desired: &DesiredInstances) -> Result<NodeReport, LinkError> {
        Ok(self.0.apply(desired.clone()).await)
    }
    async fn report(&self) -> Result<NodeReport, LinkError> {
        Ok(self.0.report())
    }
    async fn terminate(&self, id: &str) -> Result<TerminateAck, LinkError> {
        Ok(self.0.terminate(id).await)
    }
    async fn reboot(&self, _: &str) -> Result<(), LinkError> {
        Ok(())
    }
    async fn console(&self, _: &str) -> Result<String, LinkError> {
        Ok(String::new())
    }
    async fn apply_volumes(&self, _: &DesiredVolumes) -> Result<VolumesReport, LinkError> {
        Err(LinkError::Refused {
            status: 404,
            message: "no volumes in this test".into(),
        })
    }
    async fn volumes(&self) -> Result<VolumesReport, LinkError> {
        Err(LinkError::Refused {
            status: 404,
            message: "no volumes in this test".into(),
        })
    }
}

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

#[allow(clippy::too_many_arguments)]
fn inst(
    files: &FileServer,
    id: &str,
    group: &str,
    bridge: &str,
    ip: &str,
    mac: &str,
    node: &str,
    public: &str,
) -> InstanceDesired {
    let mut i = instance(id, group, bridge, ip, mac, node);
    i.spec.image.kernel = files.image("eki-netns", &b"not a kernel"[..]);
    i.public_ip = Some(public.into());
    i
}

/// Waits until every listed instance runs on its node.
async fn running(nodes: &[Arc<Node>], ids: &[&str]) {
    for n in nodes {
        n.settle().await;
    }
    for id in ids {
        let state = nodes
            .iter()
            .flat_map(|n| n.report().instances)
            .find(|r| r.instance_id == *id)
            .map(|r| (r.state, r.error));
        assert!(
            matches!(state, Some((VmState::Running, _))),
            "{id}: {state:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rules_and_elastic_ips_across_hosts() {
    if !enabled() {
        eprintln!("skipped: set IRONBARK_NET_TESTS=1 (as root) to run");
        return;
    }
    let pid = std::process::id();
    let [cc, nc1, nc2, inet, ul] = ["cc", "n1", "n2", "in", "ul"].map(|n| format!("ibm{n}-{pid}"));
    let prefix = format!("ibmi{pid}-");
    let state = std::env::temp_dir().join(format!("ironbark-cc-multihost-{pid}"));
    let ids = ["i-0000aaa1", "i-0000aaa2", "i-0000dbd1"];
    let mut namespaces = vec![
        cc.clone(),
        nc1.clone(),
        nc2.clone(),
        inet.clone(),
        ul.clone(),
    ];
    namespaces.extend(ids.iter().map(|i| format!("{prefix}{i}")));
    let mut guard = Guard {
        namespaces,
        children: vec![],
        state: state.clone(),
    };
    std::fs::create_dir_all(&state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // A private state directory: dnsmasq's host lists live elsewhere.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for ns in &guard.namespaces[..5] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The underlay: a switch namespace with a port per host.
    sh(&["ip", "-n", &ul, "link", "add", "sw", "type", "bridge"]);
    sh(&["ip", "-n", &ul, "link", "set", "sw", "up"]);
    for (i, host) in [&cc, &nc1, &nc2].iter().enumerate() {
        let port = format!("p{i}");
        sh(&[
            "ip", "link", "add", &port, "netns", &ul, "type", "veth", "peer", "name", "eth1",
            "netns", host,
        ]);
        sh(&["ip", "-n", &ul, "link", "set", &port, "master", "sw", "up"]);
        let addr = format!("10.99.0.{}/24", i + 1);
        sh(&["ip", "-n", host, "addr", "add", &addr, "dev", "eth1"]);
        // Room for the VXLAN header under a 1500-byte segment MTU.
        sh(&["ip", "-n", host, "link", "set", "eth1", "mtu", "1600", "up"]);
        sh(&["ip", "-n", &ul, "link", "set", &port, "mtu", "1600"]);
    }
    // The public link.
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

    // Two NCs, each on its own "host".
    let files = FileServer::start().await;
    let data = TempDir::new("multihost");
    let mut nodes = Vec::new();
    for (id, ns) in [("nc1", &nc1), ("nc2", &nc2)] {
        let mut cfg = NodeConfig::new(id, data.path().join(id), "t0ken");
        cfg.underlay_interface = Some("eth1".into());
        cfg.poll_interval = Duration::from_secs(3600);
        let hv = NetnsHypervisor::new(NetnsHypervisorConfig {
            host_netns: Some(ns.to_string()),
            prefix: prefix.clone(),
            dhcp_timeout: Duration::from_secs(15),
        });
        let node = Node::start_with_net(
            cfg,
            Arc::new(hv),
            Arc::new(LinuxSegNet::new(Some(ns.to_string()))),
        )
        .await
        .unwrap();
        nodes.push(node);
    }

    let mut cfg = CcConfig::new("zone-a", "t0ken", &state);
    cfg.netns = Some(cc.clone());
    cfg.public_interface = Some("pub0".into());
    cfg.public_ips = vec![([203, 0, 113, 0].into(), [203, 0, 113, 255].into())];
    cfg.private_interface = Some("eth1".into());
    cfg.private_ip = Some("10.99.0.1".parse().unwrap());
    cfg.nodes = vec![
        ("nc1".into(), "http://10.99.0.2:8775".into()),
        ("nc2".into(), "http://10.99.0.3:8775".into()),
    ];
    cfg.poll_interval = Duration::from_secs(3600);
    let links = nodes.clone();
    let cc_ctl = ClusterController::with_parts(cfg.clone(), Arc::new(LinuxHostNet::new(&cfg)), {
        move |id, _| {
            let n = if id == "nc1" { &links[0] } else { &links[1] };
            Arc::new(Local(n.clone())) as Arc<dyn NodeLink>
        }
    })
    .unwrap();

    let mut z = ZoneDesired {
        generation: 1,
        node_poll_secs: None,
        segments: vec![
            segment("sg-web", "ibr0", "10.200.0.0/28", "10.200.0.1", 10),
            segment("sg-db", "ibr1", "10.200.0.16/28", "10.200.0.17", 11),
        ],
        instances: vec![
            inst(
                &files,
                ids[0],
                "sg-web",
                "ibr0",
                "10.200.0.2",
                "d0:0d:00:00:aa:a1",
                "nc1",
                "203.0.113.10",
            ),
            inst(
                &files,
                ids[1],
                "sg-web",
                "ibr0",
                "10.200.0.3",
                "d0:0d:00:00:aa:a2",
                "nc2",
                "203.0.113.11",
            ),
            inst(
                &files,
                ids[2],
                "sg-db",
                "ibr1",
                "10.200.0.18",
                "d0:0d:00:00:db:d1",
                "nc2",
                "203.0.113.20",
            ),
        ],
    };
    cc_ctl.apply(z.clone()).await.unwrap();
    running(&nodes, &ids).await;
    let [w1, w2, d1] = ids.map(|i| format!("{prefix}{i}"));
    // Each got its planned address by DHCP through the tunnels.
    for (ns, ip) in [
        (&w1, "10.200.0.2/28"),
        (&w2, "10.200.0.3/28"),
        (&d1, "10.200.0.18/28"),
    ] {
        let a = sh(&["ip", "-n", ns, "-br", "addr", "show", "dev", "eth0"]);
        assert!(a.contains(ip), "{ns}: {a}");
    }
    // nc1 runs only sg-web: it has no sg-db segment.
    let links1 = sh(&["ip", "-n", &nc1, "-br", "link"]);
    assert!(
        links1.contains("ivx10") && !links1.contains("ivx11") && !links1.contains("ibr1"),
        "{links1}"
    );

    // One group across hosts: free. Different groups: nothing.
    assert!(ping(&w1, "10.200.0.3"), "same group, different NC hosts");
    assert!(ping(&w2, "10.200.0.2"));
    assert!(!ping(&w1, "10.200.0.18"));
    assert!(!ping(&d1, "10.200.0.2"));

    z.generation += 1;
    z.segments[1].rules = vec![rule(
        RuleProtocol::Icmp,
        -1,
        -1,
        RuleSourceSpec::Group("sg-web".into()),
    )];
    cc_ctl.apply(z.clone()).await.unwrap();
    assert!(ping(&w1, "10.200.0.18"), "allowed by the source-group rule");
    assert!(ping(&w1, "203.0.113.20"), "and through db's public address");
    assert!(!ping(&d1, "10.200.0.2"), "the rule is one-way");

    // The internet: nothing, then tcp 8080 after the authorize, then
    // nothing again after the revoke.
    guard.children.push(server(&w1, 8080, "web1"));
    guard.children.push(server(&w2, 8080, "web2"));
    wait_listening(&w1, 8080);
    wait_listening(&w2, 8080);
    assert_eq!(tcp(&inet, "203.0.113.10", 8080), None);
    z.generation += 1;
    z.segments[0].rules = vec![rule(
        RuleProtocol::Tcp,
        8080,
        8080,
        RuleSourceSpec::Cidr("192.0.2.0/24".into()),
    )];
    cc_ctl.apply(z.clone()).await.unwrap();
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8080).as_deref(),
        Some("web1 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.11", 8080).as_deref(),
        Some("web2 from 192.0.2.2")
    );

    // The elastic IP 203.0.113.10 moves to web2 (on the other NC host),
    // web1 gets a fresh one; then back.
    z.generation += 1;
    z.instances[0].public_ip = Some("203.0.113.50".into());
    z.instances[1].public_ip = Some("203.0.113.10".into());
    cc_ctl.apply(z.clone()).await.unwrap();
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8080).as_deref(),
        Some("web2 from 192.0.2.2")
    );
    assert_eq!(
        tcp(&inet, "203.0.113.50", 8080).as_deref(),
        Some("web1 from 192.0.2.2")
    );
    assert_eq!(tcp(&inet, "203.0.113.11", 8080), None);
    z.generation += 1;
    z.instances[0].public_ip = Some("203.0.113.10".into());
    z.instances[1].public_ip = Some("203.0.113.11".into());
    cc_ctl.apply(z.clone()).await.unwrap();
    assert_eq!(
        tcp(&inet, "203.0.113.10", 8080).as_deref(),
        Some("web1 from 192.0.2.2")
    );

    z.generation += 1;
    z.segments[0].rules.clear();
    cc_ctl.apply(z.clone()).await.unwrap();
    assert_eq!(tcp(&inet, "203.0.113.10", 8080), None, "revoked");

    // Everything ends: the NCs' bridges and tunnels go with the instances.
    for c in &mut guard.children {
        let _ = c.kill();
        let _ = c.wait();
    }
    guard.children.clear();
    cc_ctl
        .apply(ZoneDesired {
            generation: z.generation + 1,
            node_poll_secs: None,
            segments: vec![],
            instances: vec![],
        })
        .await
        .unwrap();
    for n in &nodes {
        n.settle().await;
    }
    for host in [&cc, &nc1, &nc2] {
        let l = sh(&["ip", "-n", host, "-br", "link"]);
        assert!(!l.contains("ivx") && !l.contains("ibr"), "{host}: {l}");
    }
    for n in &nodes {
        n.shutdown();
    }
    drop(guard);
}
