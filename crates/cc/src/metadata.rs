//! The EC2 instance metadata service, served by the CC.
//!
//! A guest asks `http://169.254.169.254/...`; the nftables DNAT on its
//! segment's bridge sends the connection to this listener on the segment's
//! gateway, keeping the guest's source address. That address is the whole
//! identification: the instance whose private IP it is gets its own
//! metadata, any other source gets 404. The connection must also have
//! arrived at that instance's own gateway (the local address), so a guest
//! cannot read another segment's instance by reaching a different gateway;
//! the table's `input` chain additionally drops packets for a gateway that
//! come in on the wrong bridge or from the wrong subnet.
//!
//! The data is the [`InstanceMetadata`] of the last applied
//! [`ZoneDesired`], indexed by private address in a [`MetadataStore`] that
//! the controller replaces whole on every apply. Both `/latest/` and
//! `/2009-04-04/` serve the same tree:
//!
//! ```text
//! /latest/meta-data/            ami-id, block-device-mapping/, hostname, instance-id,
//!                               instance-type, kernel-id, local-hostname, local-ipv4,
//!                               placement/, public-ipv4, public-keys/, ramdisk-id,
//!                               reservation-id, security-groups
//! /latest/user-data             raw bytes (404 when there are none)
//! ```
//!
//! Entries whose value the instance does not have (a public address, a
//! key, a ramdisk) are neither listed nor served.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use ironbark_cluster_api::{InstanceMetadata, ZoneDesired};
use tokio::net::TcpListener;

/// The metadata API versions served (the tree is the same for each).
pub const VERSIONS: [&str; 2] = ["2009-04-04", "latest"];

/// Who asked: the connection's two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaPeer {
    /// The guest (DNAT keeps its address).
    pub remote: SocketAddr,
    /// The gateway address the connection was redirected to.
    pub local: SocketAddr,
}

impl Connected<IncomingStream<'_, TcpListener>> for MetaPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        let remote = *stream.remote_addr();
        // An unknown local address matches no gateway, so the guest gets 404.
        let local = stream
            .io()
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        MetaPeer { remote, local }
    }
}

/// One instance's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaEntry {
    pub instance_id: String,
    /// The gateway of the instance's segment: where its requests arrive.
    pub gateway: Ipv4Addr,
    pub metadata: InstanceMetadata,
}

/// The metadata of every instance of the zone, by private address.
#[derive(Default)]
pub struct MetadataStore {
    by_ip: RwLock<Arc<HashMap<Ipv4Addr, Arc<MetaEntry>>>>,
}

impl MetadataStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `zone` from now on. Instances whose address or segment is
    /// unusable are left out (the planner warns about them).
    pub fn replace(&self, zone: &ZoneDesired) {
        let mut map = HashMap::new();
        for inst in &zone.instances {
            let Ok(ip) = inst.private_ip.parse::<Ipv4Addr>() else {
                continue;
            };
            let Some(gateway) = zone
                .segments
                .iter()
                .find(|s| s.group_id == inst.group_id)
                .and_then(|s| s.gateway.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            // Two instances claiming one address: neither may read the
            // other's data, so the address answers for neither.
            let entry = Arc::new(MetaEntry {
                instance_id: inst.spec.instance_id.clone(),
                gateway,
                metadata: inst.metadata.clone(),
            });
            map.entry(ip)
                .and_modify(|e: &mut Option<Arc<MetaEntry>>| *e = None)
                .or_insert(Some(entry));
        }
        let map = map
            .into_iter()
            .filter_map(|(ip, e)| Some((ip, e?)))
            .collect();
        *self.by_ip.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// The instance a connection from `peer` speaks for, if any.
    pub fn lookup(&self, peer: &MetaPeer) -> Option<Arc<MetaEntry>> {
        let IpAddr::V4(remote) = peer.remote.ip() else {
            return None;
        };
        let entry = self
            .by_ip
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&remote)
            .cloned()?;
        (peer.local.ip() == IpAddr::V4(entry.gateway)).then_some(entry)
    }
}

/// The metadata routes. Serve with
/// `into_make_service_with_connect_info::<MetaPeer>()` (see [`serve`]).
pub fn router(store: Arc<MetadataStore>) -> Router {
    Router::new().fallback(handle).with_state(store)
}

/// Serves metadata on `listener` until the process ends.
pub async fn serve(store: Arc<MetadataStore>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(store).into_make_service_with_connect_info::<MetaPeer>(),
    )
    .await
}

async fn handle(
    State(store): State<Arc<MetadataStore>>,
    ConnectInfo(peer): ConnectInfo<MetaPeer>,
    method: Method,
    uri: Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let Some(entry) = store.lookup(&peer) else {
        tracing::debug!(peer = %peer.remote, path = uri.path(), "metadata request from no instance");
        return not_found();
    };
    match answer(&entry, uri.path()) {
        Some(Answer::Text(t)) => ([(header::CONTENT_TYPE, "text/plain")], t).into_response(),
        Some(Answer::Bytes(b)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
        }
        None => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "Not Found",
    )
        .into_response()
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Text(String),
    Bytes(Vec<u8>),
}

/// The answer to `path` for `entry`, or `None` for 404.
fn answer(entry: &MetaEntry, path: &str) -> Option<Answer> {
    let text = |s: &str| Some(Answer::Text(s.to_string()));
    if path == "/" {
        return text(&VERSIONS.join("\n"));
    }
    let rest = path.strip_prefix('/')?;
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if !VERSIONS.contains(&version) {
        return None;
    }
    let m = &entry.metadata;
    match rest {
        "" => {
            let mut items = vec!["meta-data/"];
            if m.user_data.is_some() {
                items.push("user-data");
            }
            text(&items.join("\n"))
        }
        "user-data" => m.user_data.clone().map(Answer::Bytes),
        _ => {
            let leaf = rest.strip_prefix("meta-data")?;
            let leaf = leaf.strip_prefix('/').unwrap_or(leaf);
            meta_data(entry, leaf).map(Answer::Text)
        }
    }
}

/// Everything under `meta-data/`; `path` is relative to it. A directory
/// answers with or without its trailing slash, as EC2's does.
fn meta_data(entry: &MetaEntry, path: &str) -> Option<String> {
    let m = &entry.metadata;
    let dir = path.trim_end_matches('/');
    let one = |s: &str| Some(s.to_string());
    match dir {
        "" => Some(listing(m).join("\n")),
        "ami-id" => one(&m.ami_id),
        "instance-id" => one(&entry.instance_id),
        "reservation-id" => one(&m.reservation_id),
        "instance-type" => one(&m.instance_type),
        "local-ipv4" => one(&m.local_ipv4),
        "public-ipv4" => m.public_ipv4.clone(),
        "hostname" | "local-hostname" => one(&m.hostname),
        "kernel-id" => m.kernel_id.clone(),
        "ramdisk-id" => m.ramdisk_id.clone(),
        "security-groups" => Some(m.security_groups.join("\n")),
        "placement" => one("availability-zone"),
        "placement/availability-zone" => one(&m.availability_zone),
        "public-keys" => m.public_key.as_ref().map(|(name, _)| format!("0={name}")),
        "public-keys/0" => m.public_key.as_ref().map(|_| "openssh-key".to_string()),
        "public-keys/0/openssh-key" => m.public_key.as_ref().map(|(_, key)| {
            let key = key.trim_end();
            format!("{key}\n")
        }),
        "block-device-mapping" if !m.block_device_mapping.is_empty() => Some(
            m.block_device_mapping
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => {
            // `(mapping name, device)` pairs as the CLC sends them:
            // `ami` -> `/dev/sda1`, `ephemeral0` -> `sda2`.
            let name = dir.strip_prefix("block-device-mapping/")?;
            m.block_device_mapping
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, device)| device.clone())
        }
    }
}

/// The entries of `meta-data/` this instance has, sorted as EC2 lists them.
fn listing(m: &InstanceMetadata) -> Vec<&'static str> {
    let mut items = vec!["ami-id"];
    if !m.block_device_mapping.is_empty() {
        items.push("block-device-mapping/");
    }
    items.extend(["hostname", "instance-id", "instance-type"]);
    if m.kernel_id.is_some() {
        items.push("kernel-id");
    }
    items.extend(["local-hostname", "local-ipv4", "placement/"]);
    if m.public_ipv4.is_some() {
        items.push("public-ipv4");
    }
    if m.public_key.is_some() {
        items.push("public-keys/");
    }
    if m.ramdisk_id.is_some() {
        items.push("ramdisk-id");
    }
    items.extend(["reservation-id", "security-groups"]);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::zone;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn oneshot(router: Router, req: Request<Body>) -> Response {
        router.oneshot(req).await.expect("infallible")
    }

    /// The zone's store, with i-0000000a given a key, user data and a
    /// public address.
    fn store() -> Arc<MetadataStore> {
        let mut z = zone();
        let a = z
            .instances
            .iter_mut()
            .find(|i| i.spec.instance_id == "i-0000000a")
            .unwrap();
        a.metadata.public_ipv4 = Some("203.0.113.7".into());
        a.metadata.public_key = Some(("mykey".into(), "ssh-ed25519 AAAAC3Nza me@host".into()));
        a.metadata.user_data = Some(vec![0, 159, 146, 150, b'#', b'!']);
        let s = MetadataStore::new();
        s.replace(&z);
        Arc::new(s)
    }

    fn peer(remote: &str, local: &str) -> MetaPeer {
        MetaPeer {
            remote: format!("{remote}:40000").parse().unwrap(),
            local: format!("{local}:8777").parse().unwrap(),
        }
    }

    /// A GET through the router as if from `from` redirected to `to`.
    async fn get_as(
        store: &Arc<MetadataStore>,
        from: MetaPeer,
        path: &str,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(from));
        let resp = oneshot(router(store.clone()), req).await;
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    async fn get(store: &Arc<MetadataStore>, path: &str) -> (StatusCode, String) {
        let (s, b) = get_as(store, peer("10.200.0.2", "10.200.0.1"), path).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn every_path_answers_for_the_asking_instance() {
        let s = store();
        let ok = |v: &str| (StatusCode::OK, v.to_string());
        for version in ["latest", "2009-04-04"] {
            let p = |leaf: &str| format!("/{version}/meta-data/{leaf}");
            assert_eq!(
                get(&s, &p("")).await,
                ok(
                    "ami-id\nblock-device-mapping/\nhostname\ninstance-id\ninstance-type\nkernel-id\n\
                    local-hostname\nlocal-ipv4\nplacement/\npublic-ipv4\npublic-keys/\nreservation-id\n\
                    security-groups"
                )
            );
            assert_eq!(
                get(&s, &format!("/{version}/meta-data")).await,
                get(&s, &p("")).await
            );
            assert_eq!(get(&s, &p("instance-id")).await, ok("i-0000000a"));
            assert_eq!(get(&s, &p("ami-id")).await, ok("emi-0000abcd"));
            assert_eq!(get(&s, &p("reservation-id")).await, ok("r-0000000a"));
            assert_eq!(get(&s, &p("instance-type")).await, ok("t1.micro"));
            assert_eq!(get(&s, &p("local-ipv4")).await, ok("10.200.0.2"));
            assert_eq!(get(&s, &p("public-ipv4")).await, ok("203.0.113.7"));
            assert_eq!(get(&s, &p("hostname")).await, ok("ip-10-200-0-2"));
            assert_eq!(get(&s, &p("local-hostname")).await, ok("ip-10-200-0-2"));
            assert_eq!(get(&s, &p("placement/")).await, ok("availability-zone"));
            assert_eq!(
                get(&s, &p("placement/availability-zone")).await,
                ok("zone-a")
            );
            assert_eq!(get(&s, &p("security-groups")).await, ok("web"));
            assert_eq!(get(&s, &p("public-keys/")).await, ok("0=mykey"));
            assert_eq!(get(&s, &p("public-keys/0/")).await, ok("openssh-key"));
            assert_eq!(
                get(&s, &p("public-keys/0/openssh-key")).await,
                ok("ssh-ed25519 AAAAC3Nza me@host\n")
            );
            assert_eq!(
                get(&s, &p("block-device-mapping/")).await,
                ok("ami\nroot\nephemeral0")
            );
            assert_eq!(
                get(&s, &p("block-device-mapping/ami")).await,
                ok("/dev/sda1")
            );
            assert_eq!(
                get(&s, &p("block-device-mapping/ephemeral0")).await,
                ok("sda2")
            );
            assert_eq!(get(&s, &p("kernel-id")).await, ok("eki-1"));
            assert_eq!(get(&s, &p("ramdisk-id")).await.0, StatusCode::NOT_FOUND);
            assert_eq!(
                get(&s, &p("block-device-mapping/swap")).await.0,
                StatusCode::NOT_FOUND
            );
            assert_eq!(get(&s, &p("no-such-thing")).await.0, StatusCode::NOT_FOUND);
            assert_eq!(
                get(&s, &format!("/{version}/")).await,
                ok("meta-data/\nuser-data")
            );
            let (status, body) = get_as(
                &s,
                peer("10.200.0.2", "10.200.0.1"),
                &format!("/{version}/user-data"),
            )
            .await;
            assert_eq!(
                (status, body),
                (StatusCode::OK, vec![0, 159, 146, 150, b'#', b'!'])
            );
        }
        assert_eq!(get(&s, "/").await, ok("2009-04-04\nlatest"));
        assert_eq!(
            get(&s, "/2008-02-01/meta-data/").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn what_an_instance_lacks_is_neither_listed_nor_served() {
        let s = store();
        let b = peer("10.200.0.3", "10.200.0.1");
        let (_, listing) = get_as(&s, b, "/latest/meta-data/").await;
        let listing = String::from_utf8(listing).unwrap();
        assert!(
            !listing.contains("public-ipv4") && !listing.contains("public-keys"),
            "{listing}"
        );
        assert_eq!(
            get_as(&s, b, "/latest/meta-data/instance-id").await.1,
            b"i-0000000b"
        );
        assert_eq!(
            get_as(&s, b, "/latest/meta-data/public-ipv4").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_as(&s, b, "/latest/meta-data/public-keys/").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_as(&s, b, "/latest/user-data").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get_as(&s, b, "/latest/").await.1, b"meta-data/");
        // The other segment's instance, through its own gateway.
        let c = peer("10.200.0.18", "10.200.0.17");
        assert_eq!(
            get_as(&s, c, "/latest/meta-data/instance-id").await.1,
            b"i-0000000c"
        );
        assert_eq!(
            get_as(&s, c, "/latest/meta-data/security-groups").await.1,
            b"db"
        );
    }

    #[tokio::test]
    async fn a_foreign_source_gets_nothing() {
        let s = store();
        for from in [
            peer("10.200.0.9", "10.200.0.1"),  // no instance has it
            peer("192.0.2.10", "10.200.0.1"),  // outside every segment
            peer("127.0.0.1", "127.0.0.1"),    // the host itself
            peer("10.200.0.18", "10.200.0.1"), // an instance, at another segment's gateway
            peer("10.200.0.2", "192.0.2.1"),   // not arriving at a gateway at all
        ] {
            for path in [
                "/latest/meta-data/",
                "/latest/meta-data/instance-id",
                "/latest/user-data",
                "/",
            ] {
                assert_eq!(
                    get_as(&s, from, path).await.0,
                    StatusCode::NOT_FOUND,
                    "{from:?} {path}"
                );
            }
        }
        let v6 = MetaPeer {
            remote: "[::1]:4000".parse().unwrap(),
            local: "[::1]:8777".parse().unwrap(),
        };
        assert_eq!(
            get_as(&s, v6, "/latest/meta-data/").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn only_reads_are_allowed() {
        let s = store();
        let mut req = Request::put("/latest/api/token")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer("10.200.0.2", "10.200.0.1")));
        assert_eq!(
            oneshot(router(s), req).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn a_new_zone_replaces_the_old_one() {
        let s = store();
        let mut z = zone();
        z.instances.retain(|i| i.spec.instance_id != "i-0000000a");
        s.replace(&z);
        assert_eq!(
            get(&s, "/latest/meta-data/instance-id").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_shared_address_answers_for_no_one() {
        let mut z = zone();
        z.instances[1].private_ip = z.instances[0].private_ip.clone();
        let s = MetadataStore::new();
        s.replace(&z);
        assert_eq!(s.lookup(&peer("10.200.0.3", "10.200.0.1")), None);
        assert!(s.lookup(&peer("10.200.0.18", "10.200.0.17")).is_some());
    }
}
