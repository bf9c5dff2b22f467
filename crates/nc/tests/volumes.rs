//! The NC's volume attachments over the fake hypervisor: wanted volumes of
//! a running instance are plugged in, unwanted ones unplugged, failures
//! reported and retried, a volume wanted before the VM runs is plugged in
//! once it does, and the desired set survives an NC restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{Capacity, FakeHypervisor, Node, NodeConfig};
use ironbark_node_api::{
    AttachState, BootImage, DesiredInstances, DesiredVolumes, InstanceSpec, NbdTarget, VmResources,
    VmState, VolumeAttachment, VolumesReport,
};

const A: &str = "i-0000000a";

fn att(vol: &str) -> VolumeAttachment {
    VolumeAttachment {
        volume_id: vol.into(),
        device: "/dev/sdb".into(),
        nbd: NbdTarget {
            host: "192.0.2.1".into(),
            port: 10900,
            export: format!("{vol}.nc-test"),
            tls_identity: format!("nc-test.{vol}"),
            psk_hex: "ab".repeat(32),
            socket: None,
        },
    }
}

fn volumes(generation: u64, vols: &[&str]) -> DesiredVolumes {
    let mut instances = BTreeMap::new();
    instances.insert(A.to_string(), vols.iter().map(|v| att(v)).collect());
    DesiredVolumes {
        generation,
        instances,
    }
}

fn state(r: &VolumesReport, vol: &str) -> Option<AttachState> {
    r.attachments
        .iter()
        .find(|a| a.volume_id == vol)
        .map(|a| a.state)
}

async fn running(node: &Arc<Node>) {
    for _ in 0..200 {
        node.settle().await;
        if node
            .report()
            .instances
            .iter()
            .any(|i| i.instance_id == A && i.state == VmState::Running)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not running: {:?}", node.report());
}

#[tokio::test]
async fn volumes_follow_the_desired_set() {
    let dir = TempDir::new("volumes");
    let files = FileServer::start().await;
    let kernel = files.image("eki-00000001", b"kernel".to_vec());
    let fake = FakeHypervisor::new();
    let mut cfg = NodeConfig::new("nc-test", dir.path().join("data"), "token");
    cfg.capacity = Some(Capacity {
        cpus: 8,
        memory_mib: 8192,
        disk_gib: 100,
    });
    cfg.poll_interval = Duration::from_secs(3600);
    let node = Node::start(cfg.clone(), Arc::new(fake.clone()))
        .await
        .unwrap();

    // Wanted before the instance exists: reported once it is live.
    node.apply_volumes(volumes(1, &["vol-1"])).await.unwrap();
    assert!(node.volumes_report().attachments.is_empty());
    node.apply(DesiredInstances {
        generation: 1,
        network: None,
        instances: vec![InstanceSpec {
            instance_id: A.into(),
            account_id: "000000000001".into(),
            vm: VmResources {
                cpus: 1,
                memory_mib: 256,
                disk_gib: 0,
            },
            image: BootImage {
                kernel,
                ramdisk: None,
                root: None,
                cmdline: String::new(),
            },
            nics: vec![],
        }],
    })
    .await;
    running(&node).await;
    node.settle().await;
    assert_eq!(
        state(&node.volumes_report(), "vol-1"),
        Some(AttachState::Attached)
    );
    assert_eq!(fake.volumes_of(A), vec!["vol-1".to_string()]);

    // A second volume whose attach fails: error, then retried.
    fake.fail_volume("vol-2", true);
    node.apply_volumes(volumes(2, &["vol-1", "vol-2"]))
        .await
        .unwrap();
    node.settle().await;
    let r = node.volumes_report();
    assert_eq!(state(&r, "vol-2"), Some(AttachState::Error));
    assert!(r.attachments.iter().any(|a| a.error.is_some()));
    fake.fail_volume("vol-2", false);
    node.reconcile_volumes().await;
    assert_eq!(
        state(&node.volumes_report(), "vol-2"),
        Some(AttachState::Attached)
    );

    // An older set is ignored; malformed credentials are refused.
    node.apply_volumes(volumes(1, &[])).await.unwrap();
    node.settle().await;
    assert_eq!(fake.volumes_of(A).len(), 2);
    let mut bad = volumes(3, &["vol-3"]);
    bad.instances.get_mut(A).unwrap()[0].nbd.tls_identity = "a:b".into();
    assert!(node.apply_volumes(bad).await.is_err());
    // A same-host export's socket must be an absolute path QEMU can take
    // as an option, to a socket named as the SC names them.
    for sock in [
        "run/x.nbd",
        "/run/ironbark/../x.nbd",
        "/run/x.nbd,server.type=inet",
        "/run/x.qmp",
    ] {
        let mut bad = volumes(3, &["vol-3"]);
        bad.instances.get_mut(A).unwrap()[0].nbd.socket = Some(sock.into());
        assert!(node.apply_volumes(bad).await.is_err(), "{sock} accepted");
    }

    // Detach one; a restarted NC keeps the desired set and the VM's disks.
    node.apply_volumes(volumes(4, &["vol-2"])).await.unwrap();
    node.settle().await;
    assert_eq!(fake.volumes_of(A), vec!["vol-2".to_string()]);
    assert!(state(&node.volumes_report(), "vol-1").is_none());
    node.shutdown();
    drop(node);
    let node = Node::start(cfg, Arc::new(fake.clone())).await.unwrap();
    node.reconcile_volumes().await;
    let r = node.volumes_report();
    assert_eq!(r.generation, 4);
    assert_eq!(state(&r, "vol-2"), Some(AttachState::Attached));
    assert_eq!(fake.volumes_of(A), vec!["vol-2".to_string()]);

    // Terminated: nothing is reported for it any more.
    node.apply(DesiredInstances {
        generation: 2,
        instances: vec![],
        network: None,
    })
    .await;
    node.settle().await;
    assert!(node.volumes_report().attachments.is_empty());
}
