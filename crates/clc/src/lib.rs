//! The cloud controller (CLC) application layer.
//!
//! The API edge (`ironbark-ec2-query`) authenticates a request through
//! [`Cloud::authenticate`], parses it, and calls one method here with the
//! [`Caller`] and typed arguments. This layer validates the arguments against
//! the cloud's rules, enforces account isolation (every lookup is scoped to the
//! caller's account; only the administrator account's `verbose` views cross
//! it), and changes state through the [`Store`] in single transactions. It
//! knows nothing of HTTP or XML, and returns [`ironbark_types::Error`] for
//! every failure.

mod accounts;
mod addresses;
mod auth;
mod ebs;
mod groups;
mod images;
mod instances;
mod keypairs;
mod properties;
mod tags;
mod zones;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ironbark_keypair::SealKey;
use ironbark_store::{SqliteStore, Store};
use ironbark_types::*;

pub use accounts::{AccessKeyInfo, NewCredentials};
pub use addresses::{AddressRef, AddressView};
pub use ebs::{AttachRequest, NoStorage, SNAPSHOT_BUCKET, SnapshotPermissionChange, Storage};
pub use groups::{GroupRef, PermissionSpec, SourceGroupSpec};
pub use images::{
    LaunchPermissionChange, NoObjects, ObjectSource, RegisterImage, SystemListing,
    check_name as check_image_name,
};
pub use instances::{Cluster, NoCluster, RunRequest, StateChange};
pub use keypairs::CreatedKeyPair;
pub use properties::{
    CLUSTER_POLL, NODE_POLL, SNAPSHOT_COMPRESSION, TERMINATED_TIME, check_property,
};
pub use zones::{RegionInfo, ZoneLine};

/// Who is calling: resolved from the access key that signed the request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub account: Account,
    pub user_name: String,
    pub access_key_id: AccessKeyId,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.account.is_admin()
    }
}

/// What an operator may configure about the cloud itself.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    pub data_dir: PathBuf,
    pub region: String,
    pub zones: Vec<String>,
    /// The URL clients reach the EC2 API at, as DescribeRegions reports it.
    pub ec2_endpoint: String,
    pub vm_types: Vec<VmType>,
    pub network: NetworkConfig,
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The managed network's operator settings (eucalyptus.conf's VNET_*).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// VNET_SUBNET/VNET_NETMASK: the space segments are carved from.
    pub subnet: Ipv4Cidr,
    /// VNET_ADDRSPERNET: addresses per security group's segment (a power of two).
    pub addrs_per_net: u32,
    /// VNET_DNS: the DNS server DHCP hands out.
    pub dns: String,
    /// VNET_TAGS: the isolation tags (VXLAN VNIs) segments get, first to
    /// last; segment i gets `tag_base + i`, so the range also bounds how
    /// many groups can have running instances at once.
    pub tag_base: u32,
    pub tag_max: u32,
    /// VNET_PUBLICIPS: the public addresses instances and elastic IPs get.
    /// Empty means instances run with private addresses only.
    pub public_ips: Vec<std::net::Ipv4Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            subnet: "10.200.0.0/16".parse().expect("valid default subnet"),
            addrs_per_net: 32,
            dns: "192.0.2.53".into(),
            tag_base: 1000,
            tag_max: MAX_VNI,
            public_ips: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// How many segments fit in the subnet and the tag range.
    pub fn max_segments(&self) -> u32 {
        let size = 1u64 << (32 - u32::from(self.subnet.prefix()));
        let tags = u64::from(self.tag_max.saturating_sub(self.tag_base)) + 1;
        (size / u64::from(self.addrs_per_net.max(4)))
            .min(tags)
            .min(u64::from(u32::MAX)) as u32
    }

    /// Segment `i`'s block, its gateway (the CC), and the host addresses
    /// instances may use (network, gateway and broadcast excluded).
    pub fn block(&self, i: u32) -> (Ipv4Cidr, std::net::Ipv4Addr, Vec<std::net::Ipv4Addr>) {
        let base = u32::from(self.subnet.addr()) + i * self.addrs_per_net;
        let prefix = 32 - self.addrs_per_net.trailing_zeros() as u8;
        let cidr = Ipv4Cidr::new(base.into(), prefix).expect("prefix <= 32");
        let gw = std::net::Ipv4Addr::from(base + 1);
        let hosts = (2..self.addrs_per_net - 1)
            .map(|o| std::net::Ipv4Addr::from(base + o))
            .collect();
        (cidr, gw, hosts)
    }
}

impl CloudConfig {
    pub fn new(data_dir: impl Into<PathBuf>, ec2_endpoint: impl Into<String>) -> Self {
        CloudConfig {
            data_dir: data_dir.into(),
            region: "eucalyptus".into(),
            zones: vec!["zone1".into()],
            ec2_endpoint: ec2_endpoint.into(),
            vm_types: VmType::defaults(),
            network: NetworkConfig::default(),
        }
    }
}

/// Where the per-zone resource totals come from: the nodes' reports once NCs
/// exist; the embedded single-host cloud measures its own host.
pub trait CapacitySource: Send + Sync + 'static {
    /// Total and free capacity of a zone.
    fn capacity(&self, zone: &str) -> (Capacity, Capacity);
}

/// A zone with no nodes: nothing can run there yet.
pub struct NoCapacity;

impl CapacitySource for NoCapacity {
    fn capacity(&self, _zone: &str) -> (Capacity, Capacity) {
        (Capacity::default(), Capacity::default())
    }
}

pub struct Cloud {
    store: Arc<dyn Store>,
    seal: SealKey,
    config: CloudConfig,
    capacity: Arc<dyn CapacitySource>,
    objects: Arc<dyn ObjectSource>,
    cluster: Arc<dyn Cluster>,
    storage: Arc<dyn Storage>,
    /// The SC's last report: export addresses for the NCs, progress.
    storage_report: std::sync::Mutex<Option<ironbark_sc_api::StorageReport>>,
    /// When the SC last took the whole storage desired state (`None`:
    /// not since this process started).
    storage_pushed: std::sync::Mutex<Option<std::time::Instant>>,
    /// One EBS change at a time (volumes, attachments, snapshots).
    ebs_lock: tokio::sync::Mutex<()>,
    /// How long CreateSnapshot waits for the SC to fix the moment.
    snapshot_start_wait: std::time::Duration,
    /// When the snapshot bucket was last swept of what no snapshot owns
    /// (`None`: not since this process started).
    snapshots_swept: std::sync::Mutex<Option<std::time::Instant>>,
    /// RunInstances places and addresses instances from what is free;
    /// one at a time, so two calls never take the same node room or IP.
    run_lock: tokio::sync::Mutex<()>,
    /// Desired-state generation; starts at the clock so it keeps growing
    /// across restarts.
    generation: std::sync::atomic::AtomicU64,
    /// Access keys already unsealed, valid while the store's version holds.
    auth_cache: std::sync::Mutex<auth::AuthCache>,
    /// RSA generation is CPU-bound: as many at once as there are cores, so
    /// each finishes as soon as it can instead of all finishing late.
    keygen: tokio::sync::Semaphore,
}

/// Layout of a data dir, in one place so the server and the admin tool agree.
pub fn state_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("clc.db")
}

pub fn seal_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("seal.key")
}

impl Cloud {
    pub fn new(
        store: Arc<dyn Store>,
        seal: SealKey,
        config: CloudConfig,
        capacity: Arc<dyn CapacitySource>,
    ) -> Self {
        Cloud {
            store,
            seal,
            config,
            capacity,
            objects: Arc::new(NoObjects),
            cluster: Arc::new(NoCluster),
            storage: Arc::new(NoStorage),
            storage_report: std::sync::Mutex::new(None),
            storage_pushed: std::sync::Mutex::new(None),
            ebs_lock: tokio::sync::Mutex::new(()),
            snapshot_start_wait: ebs::SNAPSHOT_START_WAIT,
            snapshots_swept: std::sync::Mutex::new(None),
            run_lock: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(now_ms().max(0) as u64),
            auth_cache: std::sync::Mutex::new(auth::AuthCache::default()),
            keygen: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            ),
        }
    }

    /// Attaches the zone's SC.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// Attaches the zone's CC.
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Attaches the object store images are registered from.
    pub fn with_objects(mut self, objects: Arc<dyn ObjectSource>) -> Self {
        self.objects = objects;
        self
    }

    /// Opens the cloud state in a data dir, creating the dir, the sealing key
    /// and the database on first use.
    pub async fn open(config: CloudConfig, capacity: Arc<dyn CapacitySource>) -> Result<Self> {
        let seal = load_or_create_seal_key(&seal_key_path(&config.data_dir))?;
        let db_path = state_db_path(&config.data_dir);
        create_private_dir(db_path.parent().expect("db path has a parent"))?;
        let store = SqliteStore::open(&db_path).await?;
        Ok(Cloud::new(Arc::new(store), seal, config, capacity))
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))
}

/// Writes `bytes` to a fresh mode-0600 temporary file beside `path`, fsynced,
/// and returns its name: the first half of every atomic private write.
fn private_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Replaces `path` atomically with `bytes`, readable by its owner only:
/// for secrets (keys, tokens, credentials) a crash must never leave half
/// written.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = private_temp(path, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The sealing key lives beside, not inside, the database, so a copy of the
/// database alone yields no usable secret. Written once, atomically, 0600.
fn load_or_create_seal_key(path: &Path) -> Result<SealKey> {
    if let Ok(bytes) = std::fs::read(path) {
        return SealKey::from_bytes(&bytes)
            .map_err(|e| Error::internal(format!("sealing key {}: {e}", path.display())));
    }
    create_private_dir(path.parent().expect("key path has a parent"))?;
    let key = SealKey::generate();
    let io = |e: std::io::Error| Error::internal(format!("writing {}: {e}", path.display()));
    let tmp = private_temp(path, &key.to_bytes()).map_err(io)?;
    // A racing first start must not end with two different keys.
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            if let Some(dir) = path.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            load_or_create_seal_key(path)
        }
        Err(e) => Err(io(e)),
    }
}

/// Validation shared by the modules: the printable-ASCII rule EC2 applies to
/// names and descriptions in its classic (non-VPC) mode.
pub(crate) fn check_text(param: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::missing(param));
    }
    if value.len() > max {
        return Err(Error::invalid_value(format!(
            "Value for parameter {param} is too long: at most {max} characters"
        )));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::invalid_value(format!(
            "Value ({value}) for parameter {param} is invalid: only printable ASCII characters are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use ironbark_store::SqliteStore;

    pub async fn cloud() -> Cloud {
        let store = SqliteStore::in_memory().await.unwrap();
        let mut config = CloudConfig::new("/nonexistent", "http://127.0.0.1:8773/");
        // A pool small enough to run out of in a test.
        config.network.public_ips = (1..=3).map(|n| [203, 0, 113, n].into()).collect();
        Cloud::new(
            Arc::new(store),
            SealKey::generate(),
            config,
            Arc::new(NoCapacity),
        )
    }

    pub async fn caller(cloud: &Cloud, name: &str) -> Caller {
        let creds = cloud.create_account(name).await.unwrap();
        Caller {
            account: cloud
                .store
                .account_by_id(&creds.account_id)
                .await
                .unwrap()
                .unwrap(),
            user_name: ACCOUNT_ADMIN_USER.into(),
            access_key_id: creds.access_key_id,
        }
    }
}
