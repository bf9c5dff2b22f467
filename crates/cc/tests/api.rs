//! The CC's HTTP API through its typed client: the token is required, every
//! operation round-trips, node events reach the CLC callback, the client
//! tells a silent CC from one that refuses, and the whole relay works
//! against a real NC (fake hypervisor) over HTTP, including the broadcast
//! when a node is really unreachable. Also the metadata listener over real
//! TCP, where the connection's own addresses identify the instance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use ironbark_cc::testdata::{cfg, zone};
use ironbark_cc::{
    ClusterClient, ClusterController, FakeHostNet, FakeMode, FakeNode, MetadataStore, NodeLink,
};
use ironbark_cluster_api::ZoneReport;
use ironbark_nc::testing::{FileServer, TempDir};
use ironbark_nc::{FakeHypervisor, Node, NodeClient, NodeConfig};
use ironbark_node_api::{InstanceReport, NodeReport, VmState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "t0ken";

async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A CLC stand-in that records the zone reports POSTed to it.
async fn clc() -> (String, Arc<Mutex<Vec<ZoneReport>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |Json(r): Json<ZoneReport>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(r);
            }
        }),
    );
    let (l, url) = listen().await;
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("{url}/events"), got)
}

struct Served {
    client: ClusterClient,
    url: String,
    nodes: Vec<Arc<FakeNode>>,
    clc: Arc<Mutex<Vec<ZoneReport>>>,
}

/// A CC over fake nodes nc1, nc2, served on 127.0.0.1.
async fn serve_fake() -> Served {
    let (clc_url, clc) = clc().await;
    let mut c = cfg();
    c.nodes = vec![
        ("nc1".into(), "http://nc1.invalid".into()),
        ("nc2".into(), "http://nc2.invalid".into()),
    ];
    c.clc_callback_url = Some(clc_url);
    c.terminate_timeout = Duration::from_millis(200);
    let nodes = vec![
        Arc::new(FakeNode::new("nc1")),
        Arc::new(FakeNode::new("nc2")),
    ];
    let links = nodes.clone();
    let cc = ClusterController::with_parts(c, Arc::new(FakeHostNet::new()), |id, _| {
        links[if id == "nc1" { 0 } else { 1 }].clone() as Arc<dyn NodeLink>
    })
    .unwrap();
    let (l, url) = listen().await;
    tokio::spawn(async move { axum::serve(l, ironbark_cc::router(cc)).await });
    Served {
        client: ClusterClient::new(&url, TOKEN).unwrap(),
        url,
        nodes,
        clc,
    }
}

#[tokio::test]
async fn the_bearer_token_is_required() {
    let s = serve_fake().await;
    let wrong = ClusterClient::new(&s.url, "guess").unwrap();
    let err = wrong.report().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!err.is_unreachable());
    assert_eq!(wrong.apply(&zone()).await.unwrap_err().status(), Some(401));
    assert_eq!(
        wrong.terminate("i-0000000a").await.unwrap_err().status(),
        Some(401)
    );
    assert!(s.nodes[0].take_calls().is_empty(), "nothing reached a node");

    let mut tcp = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /v1/zone HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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
    let s = serve_fake().await;
    let report = s.client.apply(&zone()).await.unwrap();
    assert_eq!(report.generation, 7);
    assert_eq!(s.client.report().await.unwrap(), report);

    s.client.reboot("i-0000000a").await.unwrap();
    assert_eq!(
        s.client.console("i-0000000a").await.unwrap(),
        "console of i-0000000a\n"
    );
    let err = s.client.console("i-00000077").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    let out = s.client.terminate("i-0000000a").await.unwrap();
    assert!(!out.broadcast);
    assert_eq!(out.found_on.as_deref(), Some("nc1"));

    // The instance's node is down: the CC answers (it is not the one
    // unreachable), with 503 for a relayed call and a broadcast terminate.
    s.nodes[0].set_mode(FakeMode::Down);
    let err = s.client.reboot("i-0000000b").await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(!err.is_unreachable());
    let out = s.client.terminate("i-0000000b").await.unwrap();
    assert!(out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc2"]);
}

#[tokio::test]
async fn node_events_are_recorded_and_passed_to_the_clc() {
    let s = serve_fake().await;
    s.client.apply(&zone()).await.unwrap();
    let event = NodeReport {
        node_id: "nc2".into(),
        cpus: 4,
        memory_mib: 4096,
        disk_gib: 100,
        generation: 7,
        instances: vec![InstanceReport {
            instance_id: "i-0000000c".into(),
            state: VmState::Terminated,
            error: None,
            started_ms: Some(5),
        }],
    };
    s.client.node_event(&event).await.unwrap();
    let seen = s.client.report().await.unwrap();
    assert_eq!(seen.nodes[1].report.as_ref(), Some(&event));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = s.clc.lock().unwrap().last() {
            assert_eq!(r.nodes[1].report.as_ref(), Some(&event));
            assert_eq!(r.zone, "zone-a");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CLC got no zone report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut stranger = event.clone();
    stranger.node_id = "nc9".into();
    assert_eq!(
        s.client.node_event(&stranger).await.unwrap_err().status(),
        Some(403)
    );
}

#[tokio::test]
async fn the_client_tells_a_silent_cc_from_a_refusing_one() {
    // Nothing listens: refused at once.
    let (l, url) = listen().await;
    drop(l);
    let err = ClusterClient::new(&url, TOKEN)
        .unwrap()
        .report()
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(err.status(), None);

    // Accepts and never answers.
    let (l, url) = listen().await;
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }
    });
    let client = ClusterClient::new(&url, TOKEN)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = client.terminate("i-0000000a").await.unwrap_err();
    assert!(
        matches!(err, ironbark_cc::ClientError::Timeout { .. }),
        "{err}"
    );
    assert!(err.is_unreachable());

    assert!(ClusterClient::new("https://cc:8774", TOKEN).is_err());
}

/// A real NC (fake hypervisor) on HTTP, pushing its events to the CC.
#[tokio::test]
async fn relay_to_a_real_node_controller_over_http() {
    let tmp = TempDir::new("cc-e2e");
    let files = FileServer::start().await;
    let kernel = files.image("eki-1", b"kernel".to_vec());

    let (cc_listener, cc_url) = listen().await;
    let (nc_listener, nc_url) = listen().await;
    let mut ncfg = NodeConfig::new("nc1", tmp.path().join("nc1"), TOKEN);
    ncfg.poll_interval = Duration::from_secs(3600);
    ncfg.callback_url = Some(format!("{cc_url}/v1/events"));
    let node = Node::start(ncfg, Arc::new(FakeHypervisor::new()))
        .await
        .unwrap();
    tokio::spawn(ironbark_nc::serve(node.clone(), nc_listener));

    // nc2 is configured but nothing listens there.
    let (dead, dead_url) = listen().await;
    drop(dead);
    let mut c = cfg();
    c.nodes = vec![("nc1".into(), nc_url), ("nc2".into(), dead_url)];
    c.terminate_timeout = Duration::from_millis(500);
    let cc = ClusterController::with_parts(c, Arc::new(FakeHostNet::new()), |_, url| {
        Arc::new(NodeClient::new(url, TOKEN).unwrap()) as Arc<dyn NodeLink>
    })
    .unwrap();
    tokio::spawn(async move { axum::serve(cc_listener, ironbark_cc::router(cc)).await });
    let client = ClusterClient::new(&cc_url, TOKEN).unwrap();

    let mut z = zone();
    for i in &mut z.instances {
        i.spec.image.kernel = kernel.clone();
        i.node_id = if i.spec.instance_id == "i-0000000c" {
            "nc2"
        } else {
            "nc1"
        }
        .into();
    }
    let report = client.apply(&z).await.unwrap();
    assert!(report.nodes[0].reachable);
    assert!(!report.nodes[1].reachable);

    // The NC's events bring the instances to running in the CC's report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.report().await.unwrap();
        let running = r
            .instances()
            .filter(|(n, i)| *n == "nc1" && i.state == VmState::Running)
            .count();
        if running == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not running: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = client.terminate("i-0000000a").await.unwrap();
    assert!(!out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc1"]);
    assert_eq!(out.found_on.as_deref(), Some("nc1"));

    // Placed on the dead node: every node is asked; nc1 acknowledges.
    let out = client.terminate("i-0000000c").await.unwrap();
    assert!(out.broadcast);
    assert_eq!(out.acknowledged_by, ["nc1"]);
    assert_eq!(out.found_on, None);
    assert_eq!(
        client.console("i-0000000c").await.unwrap_err().status(),
        Some(503)
    );
}

/// The metadata listener over TCP: the instance is whoever connects from
/// its address to its gateway (loopback addresses stand in for both).
#[tokio::test]
async fn metadata_over_tcp_answers_by_the_connections_addresses() {
    let mut z = zone();
    z.segments[0].subnet = "127.0.0.0/24".into();
    z.segments[0].gateway = "127.0.0.1".into();
    z.instances[1].private_ip = "127.0.0.2".into(); // i-0000000a
    let store = Arc::new(MetadataStore::new());
    store.replace(&z);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(ironbark_cc::metadata::serve(store, l));

    async fn get_from(from: &str, to: std::net::SocketAddr, path: &str) -> String {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut tcp = sock.connect(to).await.unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }
    let answer = get_from("127.0.0.2", addr, "/latest/meta-data/instance-id").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ni-0000000a"), "{answer}");
    let answer = get_from("127.0.0.3", addr, "/latest/meta-data/instance-id").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
