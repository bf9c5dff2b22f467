//! The controller's relay to the NCs, with fake nodes and the fake host
//! network: each node gets its own instances, generations only move
//! forward, terminate goes to the instance's node and to every node when
//! that one is down or silent, the poll loop marks nodes and re-sends to
//! laggards, and node events reach the CLC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ironbark_cc::testdata::{cfg, zone};
use ironbark_cc::{
    CcConfig, CcError, ClusterController, FakeHostNet, FakeMode, FakeNode, NetOp, NodeCall,
    NodeLink,
};
use ironbark_node_api::{InstanceReport, NodeReport, VmState};

struct Cluster {
    cc: Arc<ClusterController>,
    net: Arc<FakeHostNet>,
    nodes: Vec<Arc<FakeNode>>,
}

impl Cluster {
    fn node(&self, id: &str) -> &FakeNode {
        let i = ["nc1", "nc2", "nc3"].iter().position(|n| *n == id).unwrap();
        &self.nodes[i]
    }

    fn take_calls(&self) {
        for n in &self.nodes {
            n.take_calls();
        }
    }
}

/// Three fake nodes; the fixture zone places a, b on nc1 and c on nc2.
fn cluster_with(mut config: CcConfig) -> Cluster {
    config.nodes = ["nc1", "nc2", "nc3"]
        .iter()
        .map(|n| (n.to_string(), format!("http://{n}.invalid:8775")))
        .collect();
    config.terminate_timeout = Duration::from_millis(200);
    config.node_timeout = Duration::from_millis(500);
    let net = Arc::new(FakeHostNet::new());
    let nodes: Vec<Arc<FakeNode>> = ["nc1", "nc2", "nc3"]
        .iter()
        .map(|n| Arc::new(FakeNode::new(n)))
        .collect();
    let links = nodes.clone();
    let cc = ClusterController::with_parts(config, net.clone(), |id, _| {
        let i = ["nc1", "nc2", "nc3"].iter().position(|n| *n == id).unwrap();
        links[i].clone() as Arc<dyn NodeLink>
    })
    .unwrap();
    Cluster { cc, net, nodes }
}

fn cluster() -> Cluster {
    cluster_with(cfg())
}

fn apply_call(generation: u64, ids: &[&str]) -> NodeCall {
    NodeCall::Apply(generation, ids.iter().map(|s| s.to_string()).collect())
}

#[tokio::test]
async fn each_node_gets_its_own_instances_after_the_network() {
    let c = cluster();
    let report = c.cc.apply(zone()).await.unwrap();
    assert_eq!(
        c.node("nc1").take_calls(),
        [apply_call(7, &["i-0000000a", "i-0000000b"])]
    );
    assert_eq!(c.node("nc2").take_calls(), [apply_call(7, &["i-0000000c"])]);
    // A node with nothing placed on it is still told so: it must stop
    // anything it runs that the zone no longer wants.
    assert_eq!(c.node("nc3").take_calls(), [apply_call(7, &[])]);

    assert_eq!(report.zone, "zone-a");
    assert_eq!(report.generation, 7);
    assert_eq!(report.nodes.len(), 3);
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.reachable && n.last_seen_ms.is_some())
    );
    let mut running: Vec<(&str, &str)> = report
        .instances()
        .map(|(n, i)| (n, i.instance_id.as_str()))
        .collect();
    running.sort();
    assert_eq!(
        running,
        [
            ("nc1", "i-0000000a"),
            ("nc1", "i-0000000b"),
            ("nc2", "i-0000000c")
        ]
    );
    assert!(c.net.take_ops().contains(&NetOp::AddBridge("ibr0".into())));
    assert_eq!(c.cc.report(), report);
}

#[tokio::test]
async fn an_older_generation_is_ignored_and_a_newer_applied() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    c.net.take_ops();

    let mut old = zone();
    old.generation = 5;
    old.segments.clear();
    old.instances.clear();
    let report = c.cc.apply(old).await.unwrap();
    assert_eq!(report.generation, 7);
    assert!(c.nodes.iter().all(|n| n.take_calls().is_empty()));
    assert_eq!(
        c.net.take_ops(),
        [],
        "the network must not follow an old zone"
    );

    let mut newer = zone();
    newer.generation = 8;
    newer
        .instances
        .retain(|i| i.spec.instance_id != "i-0000000b");
    let report = c.cc.apply(newer).await.unwrap();
    assert_eq!(report.generation, 8);
    assert_eq!(c.node("nc1").take_calls(), [apply_call(8, &["i-0000000a"])]);
    assert_eq!(c.node("nc1").running(), ["i-0000000a"]);
    // Its DHCP entry and its filtering elements go.
    let ops = c.net.take_ops();
    assert!(matches!(ops[0], NetOp::UpdateNft(_)), "{ops:?}");
    assert_eq!(ops[1..], [NetOp::ReloadDhcp("ibr0".into())]);
}

#[tokio::test]
async fn terminate_goes_to_the_instances_node_only() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    let out = c.cc.terminate("i-0000000c").await.unwrap();
    assert!(!out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc2"]);
    assert_eq!(out.found_on.as_deref(), Some("nc2"));
    assert_eq!(
        c.node("nc2").take_calls(),
        [NodeCall::Terminate("i-0000000c".into())]
    );
    assert!(c.node("nc1").take_calls().is_empty());
    assert!(c.node("nc3").take_calls().is_empty());
}

#[tokio::test]
async fn an_unreachable_node_makes_terminate_ask_every_node() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    // The instance is really on nc3 (the CC's placement was stale), and
    // its placed node nc1 is down.
    c.node("nc3").insert_running("i-0000000a");
    c.node("nc1").set_mode(FakeMode::Down);
    let out = c.cc.terminate("i-0000000a").await.unwrap();
    assert!(out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc2", "nc3"]);
    assert_eq!(out.found_on.as_deref(), Some("nc3"));
    // nc1 was asked twice: once as the instance's node, once in the broadcast.
    let t = NodeCall::Terminate("i-0000000a".into());
    assert_eq!(c.node("nc1").take_calls(), [t.clone(), t.clone()]);
    assert_eq!(c.node("nc2").take_calls(), std::slice::from_ref(&t));
    assert_eq!(c.node("nc3").take_calls(), [t]);
    assert!(c.node("nc3").running().is_empty());
    let report = c.cc.report();
    assert!(!report.nodes[0].reachable);
    assert!(report.nodes[1].reachable && report.nodes[2].reachable);
}

#[tokio::test]
async fn a_silent_node_makes_terminate_ask_every_node_within_the_timeout() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    c.node("nc1").set_mode(FakeMode::Hang);
    let started = Instant::now();
    let out = c.cc.terminate("i-0000000b").await.unwrap();
    let took = started.elapsed();
    // Twice the 200 ms terminate timeout (its node, then everyone at once).
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    assert!(out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc2", "nc3"]);
    assert_eq!(out.found_on, None);
}

#[tokio::test]
async fn an_instance_no_node_is_known_to_run_is_looked_for_everywhere() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    c.node("nc3").insert_running("i-00000099");
    let out = c.cc.terminate("i-00000099").await.unwrap();
    assert!(out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc1", "nc2", "nc3"]);
    assert_eq!(out.found_on.as_deref(), Some("nc3"));

    // Known only from a node's report: asked there directly.
    c.node("nc2").insert_running("i-00000098");
    c.cc.poll_once().await;
    c.take_calls();
    let out = c.cc.terminate("i-00000098").await.unwrap();
    assert!(!out.broadcast);
    assert_eq!(out.found_on.as_deref(), Some("nc2"));
}

#[tokio::test]
async fn the_poll_marks_nodes_and_resends_to_laggards_without_terminated_instances() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.cc.terminate("i-0000000b").await.unwrap();
    c.take_calls();
    c.net.take_ops();

    c.cc.poll_once().await;
    for n in &c.nodes {
        assert_eq!(n.take_calls(), [NodeCall::Report], "nobody lags");
    }
    // The terminated instance leaves DHCP at the next reconcile...
    let ops = c.net.take_ops();
    assert!(matches!(ops[0], NetOp::UpdateNft(_)), "{ops:?}");
    assert_eq!(ops[1..], [NetOp::ReloadDhcp("ibr0".into())]);
    assert!(!c.net.dhcp("ibr0").unwrap().hosts.contains("10.200.0.3"));
    // ...after which the host is as planned.
    c.cc.poll_once().await;
    assert_eq!(c.net.take_ops(), []);

    c.node("nc2").set_mode(FakeMode::Down);
    c.cc.poll_once().await;
    let report = c.cc.report();
    assert!(!report.nodes[1].reachable);
    assert!(report.nodes[1].report.is_some(), "the last report is kept");

    // nc2 comes back having lost everything; nc1 too.
    c.node("nc2").set_mode(FakeMode::Up);
    c.node("nc2").forget_everything();
    c.node("nc1").forget_everything();
    c.take_calls();
    c.cc.poll_once().await;
    assert_eq!(
        c.node("nc2").take_calls(),
        [NodeCall::Report, apply_call(7, &["i-0000000c"])]
    );
    // The terminated instance is not started again.
    assert_eq!(
        c.node("nc1").take_calls(),
        [NodeCall::Report, apply_call(7, &["i-0000000a"])]
    );
    assert_eq!(c.node("nc3").take_calls(), [NodeCall::Report]);
    assert!(c.cc.report().nodes.iter().all(|n| n.reachable));

    // Once the CLC's zone no longer lists it, the tombstone is not needed;
    // while it still does, the instance stays out.
    let report = c.cc.apply(zone()).await.unwrap();
    assert_eq!(c.node("nc1").running(), ["i-0000000a"]);
    assert_eq!(report.generation, 7);
}

#[tokio::test]
async fn the_poll_repairs_network_drift() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.net.take_ops();
    c.net.crash_dhcp("ibr1");
    c.cc.poll_once().await;
    assert_eq!(c.net.take_ops(), [NetOp::StartDhcp("ibr1".into())]);
}

#[tokio::test]
async fn nothing_is_pushed_before_the_clc_sends_a_zone() {
    let c = cluster();
    c.cc.poll_once().await;
    for n in &c.nodes {
        assert_eq!(n.take_calls(), [NodeCall::Report]);
    }
    assert_eq!(c.net.take_ops(), []);
    assert_eq!(c.cc.report().generation, 0);
}

#[tokio::test]
async fn reboot_and_console_go_to_the_instances_node() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    c.cc.reboot("i-0000000c").await.unwrap();
    assert_eq!(
        c.cc.console("i-0000000c").await.unwrap(),
        "console of i-0000000c\n"
    );
    assert_eq!(
        c.node("nc2").take_calls(),
        [
            NodeCall::Reboot("i-0000000c".into()),
            NodeCall::Console("i-0000000c".into())
        ]
    );
    assert!(matches!(
        c.cc.reboot("i-00000077").await,
        Err(CcError::NotFound(_))
    ));
    c.node("nc2").set_mode(FakeMode::Down);
    let err = c.cc.console("i-0000000c").await.unwrap_err();
    assert!(matches!(err, CcError::NodeUnreachable { .. }), "{err}");
}

#[tokio::test]
async fn events_update_the_node_and_unknown_nodes_are_refused() {
    let c = cluster();
    c.cc.apply(zone()).await.unwrap();
    let mut report = NodeReport {
        node_id: "nc2".into(),
        cpus: 4,
        memory_mib: 4096,
        disk_gib: 100,
        generation: 7,
        instances: vec![InstanceReport {
            instance_id: "i-0000000c".into(),
            state: VmState::Failed,
            error: Some("no bridge".into()),
            started_ms: None,
        }],
    };
    c.cc.node_event(report.clone()).unwrap();
    let zr = c.cc.report();
    let states: Vec<_> = zr
        .instances()
        .filter(|(n, _)| *n == "nc2")
        .map(|(_, i)| i.state)
        .collect();
    assert_eq!(states, [VmState::Failed]);
    report.node_id = "nc9".into();
    assert!(matches!(
        c.cc.node_event(report),
        Err(CcError::UnknownNode(_))
    ));
}

#[tokio::test]
async fn the_clc_sets_the_node_poll_period() {
    let c = cluster();
    let configured = c.cc.poll_period();
    c.cc.apply(zone()).await.unwrap();
    assert_eq!(c.cc.poll_period(), configured, "unset keeps the CC's own");
    let mut z = zone();
    z.generation = 8;
    z.node_poll_secs = Some(2);
    c.cc.apply(z).await.unwrap();
    assert_eq!(c.cc.poll_period(), std::time::Duration::from_secs(2));
}

fn volume(id: &str, device: &str) -> ironbark_node_api::VolumeAttachment {
    ironbark_node_api::VolumeAttachment {
        volume_id: id.into(),
        device: device.into(),
        nbd: ironbark_node_api::NbdTarget {
            host: "10.0.0.9".into(),
            port: 10809,
            export: format!("{id}.nc1"),
            tls_identity: format!("nc1.{id}"),
            psk_hex: "ab".into(),
            socket: None,
        },
    }
}

#[tokio::test]
async fn volume_sets_go_to_the_instances_node_only_when_they_change() {
    let c = cluster();
    // No volumes anywhere: each node still gets its (empty) set once, as
    // a CC that has just started does not know what any of them holds,
    // and its report then says so for each node.
    let report = c.cc.apply(zone()).await.unwrap();
    for n in &c.nodes {
        let sets = n.take_volume_sets();
        assert_eq!(sets.len(), 1);
        assert!(sets[0].instances.is_empty());
    }
    assert_eq!(report.volume_reporting_nodes().len(), c.nodes.len());
    c.cc.poll_once().await;
    assert!(
        c.nodes.iter().all(|n| n.take_volume_sets().is_empty()),
        "sent once"
    );

    let mut z = zone();
    z.generation = 8;
    z.instances
        .iter_mut()
        .find(|i| i.spec.instance_id == "i-0000000a")
        .unwrap()
        .volumes = vec![volume("vol-1", "/dev/sdb")];
    let report = c.cc.apply(z.clone()).await.unwrap();
    let sets = c.node("nc1").take_volume_sets();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        sets[0].instances.keys().collect::<Vec<_>>(),
        ["i-0000000a"],
        "only instances with volumes"
    );
    assert!(c.node("nc2").take_volume_sets().is_empty());
    assert_eq!(
        report.plugged_volumes().get("i-0000000a"),
        Some(&vec!["vol-1".to_string()]),
        "{report:?}"
    );

    // The same set again is not re-sent; the poll only reads it back.
    z.generation = 9;
    c.cc.apply(z.clone()).await.unwrap();
    c.cc.poll_once().await;
    assert!(c.node("nc1").take_volume_sets().is_empty());
    assert_eq!(c.cc.report().plugged_volumes()["i-0000000a"], ["vol-1"]);

    // Detach: the emptied set is sent, and nothing is plugged any more.
    z.generation = 10;
    for i in &mut z.instances {
        i.volumes.clear();
    }
    let report = c.cc.apply(z).await.unwrap();
    let sets = c.node("nc1").take_volume_sets();
    assert_eq!(sets.len(), 1);
    assert!(sets[0].instances.is_empty());
    assert!(report.plugged_volumes().is_empty());
}

#[tokio::test]
async fn a_clean_restart_removes_everything_and_rebuilds_it_from_the_desired_state() {
    let c = cluster();
    assert!(c.cc.rebuild_network().await.is_err(), "no zone yet");
    c.cc.apply(zone()).await.unwrap();
    c.take_calls();
    c.net.take_ops();
    // Something stale and something drifted.
    c.net.insert_bridge("ibr9", &[]);
    c.net.crash_dhcp("ibr1");
    let changes = c.cc.rebuild_network().await.unwrap();
    let ops = c.net.take_ops();
    let pos = |op: &NetOp| {
        ops.iter()
            .position(|o| o == op)
            .unwrap_or_else(|| panic!("{op:?} in {ops:?}"))
    };
    // Torn down...
    assert!(pos(&NetOp::DeleteNft) < pos(&NetOp::DeleteBridge("ibr0".into())));
    pos(&NetOp::StopDhcp("ibr0".into()));
    pos(&NetOp::DeleteBridge("ibr9".into()));
    // ...then rebuilt.
    assert!(pos(&NetOp::DeleteBridge("ibr0".into())) < pos(&NetOp::AddBridge("ibr0".into())));
    pos(&NetOp::StartDhcp("ibr1".into()));
    assert!(
        matches!(
            ops.last(),
            Some(NetOp::StartDhcp(_)) | Some(NetOp::AddAddress(..))
        ),
        "{ops:?}"
    );
    assert!(!changes.is_empty());
    assert_eq!(c.net.bridge_names(), ["ibr0", "ibr1"]);
    assert!(c.net.nft_table().is_some());
    // Every node got its set again.
    for n in &c.nodes {
        assert!(!n.take_calls().is_empty());
    }
}
