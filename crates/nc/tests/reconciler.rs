//! The reconciler over the fake hypervisor: starts, terminations, generation
//! ordering, failed-start cleanup, explicit terminates, VMs that die,
//! orphan taps, adoption after an NC restart, and events to the CC.

use std::sync::Arc;
use std::time::Duration;

use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{Capacity, FakeCall, FakeHypervisor, Node, NodeConfig};
use ironbark_node_api::{
    BootImage, DesiredInstances, ImageRef, InstanceSpec, NicSpec, NodeReport, VmResources, VmState,
    tap_name,
};

struct World {
    _dir: TempDir,
    data: std::path::PathBuf,
    files: FileServer,
    kernel: ImageRef,
    fake: FakeHypervisor,
}

impl World {
    async fn new() -> World {
        let dir = TempDir::new("reconciler");
        let files = FileServer::start().await;
        let kernel = files.image("eki-00000001", b"not really a kernel".to_vec());
        World {
            data: dir.path().join("data"),
            _dir: dir,
            files,
            kernel,
            fake: FakeHypervisor::new(),
        }
    }

    fn config(&self) -> NodeConfig {
        let mut cfg = NodeConfig::new("nc-test", &self.data, "token");
        cfg.capacity = Some(Capacity {
            cpus: 8,
            memory_mib: 8192,
            disk_gib: 100,
        });
        // The tests drive the periodic checks themselves.
        cfg.poll_interval = Duration::from_secs(3600);
        cfg
    }

    async fn node(&self) -> Arc<Node> {
        Node::start(self.config(), Arc::new(self.fake.clone()))
            .await
            .unwrap()
    }

    fn spec(&self, id: &str) -> InstanceSpec {
        InstanceSpec {
            instance_id: id.into(),
            account_id: "000000000001".into(),
            vm: VmResources {
                cpus: 1,
                memory_mib: 256,
                disk_gib: 1,
            },
            image: BootImage {
                kernel: self.kernel.clone(),
                ramdisk: None,
                root: None,
                cmdline: String::new(),
            },
            nics: vec![NicSpec {
                mac: "d0:0d:00:00:00:01".into(),
                bridge: "br0".into(),
                tap: tap_name(id),
            }],
        }
    }

    fn desired(&self, generation: u64, ids: &[&str]) -> DesiredInstances {
        DesiredInstances {
            generation,
            instances: ids.iter().map(|id| self.spec(id)).collect(),
            network: None,
        }
    }

    fn dir(&self, id: &str) -> std::path::PathBuf {
        std::fs::canonicalize(&self.data)
            .unwrap()
            .join("instances/000000000001")
            .join(id)
    }
}

const A: &str = "i-0000000a";
const B: &str = "i-0000000b";
const C: &str = "i-0000000c";

fn state_of(report: &NodeReport, id: &str) -> Option<VmState> {
    report
        .instances
        .iter()
        .find(|i| i.instance_id == id)
        .map(|i| i.state)
}

#[tokio::test]
async fn starts_desired_and_terminates_undesired_instances() {
    let w = World::new().await;
    let node = w.node().await;

    let report = node.apply(w.desired(1, &[A, B])).await;
    assert_eq!(state_of(&report, A), Some(VmState::Pending));
    assert_eq!(report.generation, 1);
    assert_eq!(
        (report.cpus, report.memory_mib, report.disk_gib),
        (8, 8192, 100)
    );
    node.settle().await;
    let report = node.report();
    assert_eq!(state_of(&report, A), Some(VmState::Running));
    assert_eq!(state_of(&report, B), Some(VmState::Running));
    assert!(report.instances.iter().all(|i| i.started_ms.is_some()));
    assert_eq!(w.fake.running(), vec![A.to_string(), B.to_string()]);
    assert!(w.dir(A).join("spec.json").is_file());
    // One download for both launches.
    assert_eq!(w.files.hits("/eki-00000001"), 1);

    let report = node.apply(w.desired(2, &[A])).await;
    assert_eq!(state_of(&report, B), Some(VmState::ShuttingDown));
    node.settle().await;
    let report = node.report();
    assert_eq!(state_of(&report, B), Some(VmState::Terminated));
    assert_eq!(state_of(&report, A), Some(VmState::Running));
    assert_eq!(w.fake.running(), vec![A.to_string()]);
    assert!(!w.dir(B).exists());
    assert!(!w.fake.taps().contains(&tap_name(B)));
    // Stop the VM, then delete the tap.
    let calls = w.fake.calls();
    let stop = calls
        .iter()
        .position(|c| *c == FakeCall::Stop { dir: w.dir(B) })
        .unwrap();
    let del = calls
        .iter()
        .position(|c| *c == FakeCall::DeleteTap { tap: tap_name(B) })
        .unwrap();
    assert!(stop < del);

    // Re-sending the same set changes nothing; B is not resurrected.
    node.apply(w.desired(3, &[A, B])).await;
    node.settle().await;
    assert_eq!(w.fake.starts(A), 1);
    assert_eq!(w.fake.starts(B), 1);
}

#[tokio::test]
async fn older_generations_are_ignored() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(5, &[A])).await;
    node.settle().await;
    let report = node.apply(w.desired(4, &[])).await;
    assert_eq!(report.generation, 5);
    assert_eq!(state_of(&report, A), Some(VmState::Running));
    node.settle().await;
    assert_eq!(w.fake.running(), vec![A.to_string()]);
    // The same generation again is applied (idempotently).
    node.apply(w.desired(5, &[A])).await;
    node.settle().await;
    assert_eq!(w.fake.starts(A), 1);
}

#[tokio::test]
async fn a_failed_start_is_reported_and_cleaned_up() {
    let w = World::new().await;
    w.fake.fail_start(B, "qemu: could not open /dev/kvm");
    let node = w.node().await;
    node.apply(w.desired(1, &[A, B])).await;
    node.settle().await;
    let report = node.report();
    let b = report
        .instances
        .iter()
        .find(|i| i.instance_id == B)
        .unwrap();
    assert_eq!(b.state, VmState::Failed);
    assert!(
        b.error
            .as_deref()
            .unwrap()
            .contains("could not open /dev/kvm"),
        "{b:?}"
    );
    assert_eq!(state_of(&report, A), Some(VmState::Running));
    // The tap the start made and the directory are gone.
    assert!(!w.fake.taps().contains(&tap_name(B)));
    assert!(!w.dir(B).exists());
    // Not retried by a later desired set.
    node.apply(w.desired(2, &[A, B])).await;
    node.settle().await;
    assert_eq!(w.fake.starts(B), 1);
}

#[tokio::test]
async fn a_corrupt_image_fails_the_launch_with_a_clear_error() {
    let w = World::new().await;
    let node = w.node().await;
    let mut spec = w.spec(A);
    spec.image.kernel.sha256 = "0".repeat(64);
    node.apply(DesiredInstances {
        generation: 1,
        instances: vec![spec],
        network: None,
    })
    .await;
    node.settle().await;
    let report = node.report();
    let a = &report.instances[0];
    assert_eq!(a.state, VmState::Failed);
    assert!(a.error.as_deref().unwrap().contains("corrupt"), "{a:?}");
    assert_eq!(w.fake.starts(A), 0);
    assert!(!w.dir(A).exists());
}

#[tokio::test]
async fn invalid_specs_fail_without_touching_anything() {
    let w = World::new().await;
    let node = w.node().await;
    let mut bad = w.spec(A);
    bad.account_id = "../../etc".into();
    let mut dup = w.spec(B);
    dup.nics[0].tap = tap_name(C);
    node.apply(DesiredInstances {
        generation: 1,
        instances: vec![bad, w.spec(C), dup],
        network: None,
    })
    .await;
    node.settle().await;
    let report = node.report();
    assert_eq!(state_of(&report, A), Some(VmState::Failed));
    assert_eq!(state_of(&report, C), Some(VmState::Running));
    assert_eq!(state_of(&report, B), Some(VmState::Failed));
    assert_eq!(w.fake.starts(A) + w.fake.starts(B), 0);
}

#[tokio::test]
async fn explicit_terminate_acknowledges_known_and_unknown_ids() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A])).await;
    node.settle().await;

    assert!(node.terminate(A).await.was_here);
    node.settle().await;
    assert_eq!(state_of(&node.report(), A), Some(VmState::Terminated));
    assert!(w.fake.running().is_empty());
    assert!(!w.dir(A).exists());
    // A retried terminate gives the same answer.
    assert!(node.terminate(A).await.was_here);

    assert!(!node.terminate(C).await.was_here);
    // A broadcast terminate that overtook the start wins: C never starts.
    node.apply(w.desired(2, &[C])).await;
    node.settle().await;
    assert_eq!(w.fake.starts(C), 0);
}

#[tokio::test]
async fn terminate_during_start_leaves_nothing_running() {
    let w = World::new().await;
    w.fake.set_start_delay(Duration::from_millis(300));
    let node = w.node().await;
    node.apply(w.desired(1, &[A])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = node.apply(w.desired(2, &[])).await;
    assert_eq!(state_of(&report, A), Some(VmState::ShuttingDown));
    node.settle().await;
    assert_eq!(state_of(&node.report(), A), Some(VmState::Terminated));
    assert!(w.fake.running().is_empty());
    assert!(w.fake.taps().is_empty());
    assert!(!w.dir(A).exists());
}

#[tokio::test]
async fn a_vm_that_dies_is_reported_and_cleaned_up() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A, B])).await;
    node.settle().await;
    w.fake.crash(A);
    node.tick().await;
    node.settle().await;
    let report = node.report();
    let a = report
        .instances
        .iter()
        .find(|i| i.instance_id == A)
        .unwrap();
    assert_eq!(a.state, VmState::Terminated);
    assert!(a.error.is_some());
    assert_eq!(state_of(&report, B), Some(VmState::Running));
    assert!(!w.dir(A).exists());
    assert!(!w.fake.taps().contains(&tap_name(A)));
    // Not restarted although still desired.
    node.apply(w.desired(2, &[A, B])).await;
    node.settle().await;
    assert_eq!(w.fake.starts(A), 1);
}

#[tokio::test]
async fn orphan_taps_are_removed_and_others_left_alone() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A])).await;
    node.settle().await;
    w.fake.add_tap("tapdeadbeef01");
    w.fake.add_tap("tap0");
    w.fake.add_tap("vnet3");
    node.tick().await;
    let taps = w.fake.taps();
    assert!(!taps.contains(&"tapdeadbeef01".to_string()), "{taps:?}");
    assert!(taps.contains(&tap_name(A)));
    assert!(taps.contains(&"tap0".to_string()));
    assert!(taps.contains(&"vnet3".to_string()));
}

#[tokio::test]
async fn taps_knocked_off_their_bridge_are_attached_again() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A])).await;
    node.settle().await;
    node.tick().await;
    let attaches = |calls: Vec<FakeCall>| {
        calls
            .into_iter()
            .filter(|c| matches!(c, FakeCall::AttachTap { .. }))
            .count()
    };
    assert_eq!(
        attaches(w.fake.calls()),
        0,
        "a tap on its bridge is left alone"
    );
    w.fake.drop_bridge("br0");
    node.tick().await;
    assert!(w.fake.calls().contains(&FakeCall::AttachTap {
        tap: tap_name(A),
        bridge: "br0".into()
    }));
    node.tick().await;
    assert_eq!(attaches(w.fake.calls()), 1, "once back, nothing more to do");
}

#[tokio::test]
async fn ended_instances_are_forgotten_after_the_retention() {
    let w = World::new().await;
    let mut cfg = w.config();
    cfg.terminated_retention = Duration::from_millis(200);
    let node = Node::start(cfg, Arc::new(w.fake.clone())).await.unwrap();
    node.apply(w.desired(1, &[A])).await;
    node.settle().await;
    node.apply(w.desired(2, &[])).await;
    node.settle().await;
    assert_eq!(state_of(&node.report(), A), Some(VmState::Terminated));
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.tick().await;
    assert_eq!(state_of(&node.report(), A), None);
}

#[tokio::test]
async fn a_restarted_node_adopts_running_vms_and_cleans_dead_ones() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A, B, C])).await;
    node.settle().await;
    node.shutdown();
    drop(node);
    // While the NC is down, C's VM dies.
    w.fake.crash(C);

    let node = w.node().await;
    node.settle().await;
    let report = node.report();
    assert_eq!(state_of(&report, A), Some(VmState::Running));
    assert_eq!(state_of(&report, B), Some(VmState::Running));
    assert_eq!(state_of(&report, C), Some(VmState::Terminated));
    assert!(!w.dir(C).exists());
    assert!(!w.fake.taps().contains(&tap_name(C)));
    assert!(report.instances.iter().all(|i| i.started_ms.is_some()));

    // Adopted, not duplicated.
    node.apply(w.desired(2, &[A, B, C])).await;
    node.settle().await;
    assert_eq!(
        (w.fake.starts(A), w.fake.starts(B), w.fake.starts(C)),
        (1, 1, 1)
    );
    assert_eq!(w.fake.running(), vec![A.to_string(), B.to_string()]);

    // Adopted instances are managed like any other.
    node.apply(w.desired(3, &[B])).await;
    node.settle().await;
    assert_eq!(w.fake.running(), vec![B.to_string()]);
    assert!(!w.dir(A).exists());
}

#[tokio::test]
async fn a_start_interrupted_by_a_restart_is_cleaned_and_retried() {
    let w = World::new().await;
    // What a crash between writing the spec and starting QEMU leaves.
    let dir = {
        let data = &w.data;
        std::fs::create_dir_all(data).unwrap();
        let d = std::fs::canonicalize(data)
            .unwrap()
            .join("instances/000000000001")
            .join(A);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("spec.json"), serde_json::to_vec(&w.spec(A)).unwrap()).unwrap();
        d
    };
    let node = w.node().await;
    assert!(!dir.exists());
    assert_eq!(state_of(&node.report(), A), None);
    node.apply(w.desired(1, &[A])).await;
    node.settle().await;
    assert_eq!(state_of(&node.report(), A), Some(VmState::Running));
}

#[tokio::test]
async fn console_and_reboot() {
    let w = World::new().await;
    let node = w.node().await;
    node.apply(w.desired(1, &[A])).await;
    assert!(
        node.reboot(A).await.is_err(),
        "pending instances cannot reboot"
    );
    node.settle().await;
    let console = node.console(A).await.unwrap();
    assert!(
        console.contains("IRONBARK-READY instance-id=i-0000000a"),
        "{console}"
    );
    node.reboot(A).await.unwrap();
    assert!(node.console(A).await.unwrap().contains("fake reboot"));
    assert!(matches!(
        node.reboot(C).await,
        Err(ironbark_nc::NodeError::NotFound(_))
    ));
    assert!(matches!(
        node.console(C).await,
        Err(ironbark_nc::NodeError::NotFound(_))
    ));
}

#[tokio::test]
async fn state_changes_are_pushed_to_the_callback() {
    use axum::routing::post;
    use tokio::sync::mpsc;

    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<String>, NodeReport)>();
    let app = axum::Router::new().route(
        "/events",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    tx.send((auth, serde_json::from_slice(&body).unwrap()))
                        .unwrap();
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let w = World::new().await;
    let mut cfg = w.config();
    cfg.callback_url = Some(format!("http://{addr}/events"));
    let node = Node::start(cfg, Arc::new(w.fake.clone())).await.unwrap();
    node.apply(w.desired(1, &[A])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (auth, report) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("an event")
            .unwrap();
        assert_eq!(auth.as_deref(), Some("Bearer token"));
        if state_of(&report, A) == Some(VmState::Running) {
            break;
        }
    }
}
