//! The HTTP API and its typed client, over the fake hypervisor: the token
//! is required, every operation round-trips through NodeClient, and the
//! client tells an unreachable or silent NC from one that refuses.

use std::sync::Arc;
use std::time::Duration;

use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{ClientError, FakeHypervisor, Node, NodeClient, NodeConfig};
use ironbark_node_api::{
    BootImage, DesiredInstances, InstanceSpec, NicSpec, VmResources, VmState, tap_name,
};

const ID: &str = "i-00000000000000042";

struct Served {
    _tmp: TempDir,
    _files: FileServer,
    url: String,
    spec: InstanceSpec,
    node: Arc<Node>,
}

async fn serve() -> Served {
    let tmp = TempDir::new("api");
    let files = FileServer::start().await;
    let kernel = files.image("eki-00000042", b"kernel".to_vec());
    let mut cfg = NodeConfig::new("nc-api", tmp.path().join("data"), "cluster-secret");
    cfg.poll_interval = Duration::from_secs(3600);
    let node = Node::start(cfg, Arc::new(FakeHypervisor::new()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ironbark_nc::serve(node.clone(), listener));
    let spec = InstanceSpec {
        instance_id: ID.into(),
        account_id: "000000000042".into(),
        vm: VmResources {
            cpus: 1,
            memory_mib: 128,
            disk_gib: 0,
        },
        image: BootImage {
            kernel,
            ramdisk: None,
            root: None,
            cmdline: String::new(),
        },
        nics: vec![NicSpec {
            mac: "d0:0d:00:00:00:42".into(),
            bridge: "br0".into(),
            tap: tap_name(ID),
        }],
    };
    Served {
        _tmp: tmp,
        _files: files,
        url,
        spec,
        node,
    }
}

#[tokio::test]
async fn the_bearer_token_is_required() {
    let s = serve().await;
    let wrong = NodeClient::new(&s.url, "guess").unwrap();
    let err = wrong.report().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!err.is_unreachable());
    let err = wrong.terminate(ID).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");

    // No header at all, with a plain HTTP exchange.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /v1/instances HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{answer}"
    );
}

#[tokio::test]
async fn every_operation_round_trips() {
    let s = serve().await;
    let client = NodeClient::new(&s.url, "cluster-secret").unwrap();

    let report = client
        .apply(&DesiredInstances {
            generation: 7,
            instances: vec![s.spec.clone()],
            network: None,
        })
        .await
        .unwrap();
    assert_eq!(report.node_id, "nc-api");
    assert_eq!(report.generation, 7);
    assert_eq!(report.instances[0].state, VmState::Pending);
    s.node.settle().await;

    let report = client.report().await.unwrap();
    assert_eq!(report.instances[0].state, VmState::Running);
    assert!(report.cpus > 0);

    let console = client.console(ID).await.unwrap();
    assert!(console.contains("IRONBARK-READY"), "{console}");
    client.reboot(ID).await.unwrap();
    assert!(client.console(ID).await.unwrap().contains("fake reboot"));

    let err = client.reboot("i-ffffffff").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(err.to_string().contains("not on this node"), "{err}");
    let err = client.console("i-ffffffff").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    assert!(!client.terminate("i-ffffffff").await.unwrap().was_here);
    assert!(client.terminate(ID).await.unwrap().was_here);
    s.node.settle().await;
    let report = client.report().await.unwrap();
    assert_eq!(report.instances[0].state, VmState::Terminated);

    // An id that tries to leave its path segment is just an unknown id.
    let err = client.console("../../etc/passwd").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

#[tokio::test]
async fn unreachable_and_silent_nodes_are_told_apart_from_refusals() {
    // Nothing listens on a port we just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = NodeClient::new(&format!("http://127.0.0.1:{port}"), "t").unwrap();
    let err = client.report().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.is_unreachable());

    // A listener that accepts but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (c, _) = silent.accept().await.unwrap();
            conns.push(c);
        }
    });
    let client = NodeClient::new(&format!("http://{addr}"), "t")
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.terminate(ID).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.is_unreachable());
    assert!(started.elapsed() < Duration::from_secs(3));
}
