//! The records the cloud controller owns. They are plain data: the store
//! persists them, the application layer decides over them, the API layer
//! renders them. Times are Unix milliseconds (UTC).

use serde::{Deserialize, Serialize};

use crate::ids::*;
use crate::net::{Ipv4Cidr, Protocol};

/// Name of the administrator account every cloud is born with.
pub const ADMIN_ACCOUNT: &str = "eucalyptus";
/// Name of the user each account gets at creation, who owns its first key.
pub const ACCOUNT_ADMIN_USER: &str = "admin";
/// Name of the security group every account has.
pub const DEFAULT_GROUP: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created_ms: i64,
}

impl Account {
    pub fn is_admin(&self) -> bool {
        self.name == ADMIN_ACCOUNT
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub account_id: AccountId,
    pub name: String,
    pub created_ms: i64,
}

/// An access key with its secret in clear: only ever in memory; the store
/// keeps the secret sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKey {
    pub id: AccessKeyId,
    pub account_id: AccountId,
    pub user_name: String,
    pub secret: String,
    pub active: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    pub id: KeyPairId,
    pub account_id: AccountId,
    pub name: String,
    pub fingerprint: String,
    /// "rsa" or "ed25519".
    pub key_type: String,
    /// One-line OpenSSH public key, what instances will receive.
    pub public_key: String,
    pub created_ms: i64,
}

/// Where an ingress rule lets traffic come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleSource {
    Cidr(Ipv4Cidr),
    /// Members of another (or the same) security group, possibly another account's.
    Group {
        account_id: AccountId,
        group_id: SecurityGroupId,
        group_name: String,
    },
}

/// One ingress permission: a protocol and port range (ICMP: type and code)
/// from one source. EC2 groups several sources under one permission when it
/// renders them; storing one row per source keeps authorize/revoke exact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub protocol: Protocol,
    /// TCP/UDP: first port. ICMP: type, -1 for all. All-protocols: -1.
    pub from_port: i32,
    /// TCP/UDP: last port. ICMP: code, -1 for all. All-protocols: -1.
    pub to_port: i32,
    pub source: RuleSource,
}

impl Rule {
    /// How EC2 words a rule in its duplicate/not-found messages.
    pub fn describe(&self) -> String {
        let peer = match &self.source {
            RuleSource::Cidr(c) => c.to_string(),
            RuleSource::Group { group_id, .. } => group_id.to_string(),
        };
        format!(
            "peer: {peer}, {}, from port: {}, to port: {}, ALLOW",
            self.protocol.as_str().to_ascii_uppercase(),
            self.from_port,
            self.to_port
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: SecurityGroupId,
    pub account_id: AccountId,
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
    pub created_ms: i64,
}

/// A registered image: where its bytes are in Walrus, what they hash to,
/// what it boots with, and who may launch it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: ImageId,
    pub account_id: AccountId,
    pub name: String,
    pub description: String,
    /// `bucket/key` of the image's object in Walrus.
    pub location: String,
    pub size: u64,
    /// Hex SHA-256 of the object, checked by every NC that fetches it.
    pub sha256: String,
    pub kernel_id: Option<ImageId>,
    pub ramdisk_id: Option<ImageId>,
    pub architecture: String,
    pub public: bool,
    /// Other accounts allowed to launch it.
    pub launch_permissions: Vec<AccountId>,
    pub created_ms: i64,
}

impl Image {
    /// Whether `account` may launch (and so see) this image.
    pub fn launchable_by(&self, account: &AccountId) -> bool {
        self.public || self.account_id == *account || self.launch_permissions.contains(account)
    }
}

/// An instance's life, as EC2 names it. Eucalyptus' TERMINATED → BURIED
/// step is the record's deletion, so it has no state of its own here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    /// EC2's numeric state code.
    pub fn code(self) -> u32 {
        match self {
            InstanceState::Pending => 0,
            InstanceState::Running => 16,
            InstanceState::ShuttingDown => 32,
            InstanceState::Terminated => 48,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            _ => return None,
        })
    }

    /// Whether a move to `next` is a step of the life cycle. Terminated is
    /// final; everything may end in it (a VM can die at any time).
    pub fn may_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, ShuttingDown)
                | (Running, ShuttingDown)
                | (Pending | Running | ShuttingDown, Terminated)
        )
    }
}

/// An instance as the CLC records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub reservation_id: ReservationId,
    pub account_id: AccountId,
    pub image_id: ImageId,
    pub kernel_id: Option<ImageId>,
    pub ramdisk_id: Option<ImageId>,
    pub instance_type: String,
    pub key_name: Option<String>,
    pub group_id: SecurityGroupId,
    pub group_name: String,
    /// Base64 as the client sent it.
    pub user_data: Option<String>,
    pub zone: String,
    pub node_id: String,
    pub private_ip: String,
    pub mac: String,
    pub public_ip: Option<String>,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub launch_index: u32,
    pub launch_ms: i64,
    /// When it reached `terminated` (the bury clock starts there).
    pub terminated_ms: Option<i64>,
}

/// A volume's life cycle as the CLC records it. EC2's `in-use` is an
/// available volume with an attachment ([`Volume::api_state`]); `deleted`
/// is the record's erasure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VolumeState {
    Creating,
    Available,
    Deleting,
    Error,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::Deleting => "deleting",
            VolumeState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => VolumeState::Creating,
            "available" => VolumeState::Available,
            "deleting" => VolumeState::Deleting,
            "error" => VolumeState::Error,
            _ => return None,
        })
    }
}

/// An attachment's progress: attaching → attached → detaching → (gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "attaching" => AttachState::Attaching,
            "attached" => AttachState::Attached,
            "detaching" => AttachState::Detaching,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub instance_id: InstanceId,
    /// As the user named it (`/dev/sdb`, `/dev/vdb`, `/dev/xvdb`).
    pub device: String,
    pub state: AttachState,
    pub attach_ms: i64,
    /// DetachVolume with Force: do not wait for the guest to let go.
    pub force_detach: bool,
}

/// An EBS volume: data the SC keeps, independent of any instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: VolumeId,
    pub account_id: AccountId,
    pub size_gib: u32,
    pub snapshot_id: Option<SnapshotId>,
    pub zone: String,
    pub state: VolumeState,
    pub error: Option<String>,
    pub created_ms: i64,
    pub attachment: Option<VolumeAttachment>,
}

impl Volume {
    /// The state EC2 reports: `in-use` while attached.
    pub fn api_state(&self) -> &'static str {
        match (self.state, &self.attachment) {
            (VolumeState::Available, Some(_)) => "in-use",
            (s, _) => s.as_str(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SnapshotState::Pending,
            "completed" => SnapshotState::Completed,
            "error" => SnapshotState::Error,
            _ => return None,
        })
    }
}

/// A point-in-time copy of a volume: a raw file on the SC and a compressed
/// object in Walrus (`location`, `bucket/key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub account_id: AccountId,
    pub volume_id: VolumeId,
    pub volume_size_gib: u32,
    pub description: String,
    pub state: SnapshotState,
    pub progress: u8,
    pub started_ms: i64,
    pub location: String,
    /// `gzip` or `zstd`.
    pub compression: String,
    /// Once completed: the object's SHA-256 and the raw image's digest, as
    /// the SC reported them; a restore from Walrus checks both.
    pub sha256: Option<String>,
    pub raw_digest: Option<String>,
    pub error: Option<String>,
    /// The Walrus multipart upload the SC fills while the snapshot is
    /// pending; `None` once completed, failed (aborted) or never made.
    #[serde(default)]
    pub upload_id: Option<String>,
    /// CreateSnapshot has answered its caller: the SC had fixed the
    /// snapshot's moment by then. A pending snapshot never answered was
    /// left by a CLC that died waiting, and is withdrawn.
    #[serde(default = "answered_default")]
    pub answered: bool,
    /// createVolumePermission: `all`, or account ids.
    pub public: bool,
    pub shared_with: Vec<AccountId>,
}

/// An elastic IP: a public address from the pool that an account holds
/// until it releases it, associated with at most one of its instances.
/// (Addresses an instance gets from the pool at launch are not rows of
/// their own: they are [`Instance::public_ip`] while the instance lives.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub public_ip: String,
    pub allocation_id: AllocationId,
    pub account_id: AccountId,
    pub instance_id: Option<InstanceId>,
    pub association_id: Option<AssociationId>,
    /// The public IP the instance had before this address replaced it;
    /// given back on disassociation when still free.
    pub restore_ip: Option<String>,
    pub allocated_ms: i64,
}

/// The kinds of resources tags can be put on; the id prefix tells which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    SecurityGroup,
    KeyPair,
    Image,
    Volume,
    Snapshot,
    Instance,
}

impl ResourceType {
    pub fn of_id(id: &str) -> Option<Self> {
        if id.starts_with(SecurityGroupId::PREFIX) {
            Some(ResourceType::SecurityGroup)
        } else if id.starts_with(KeyPairId::PREFIX) {
            Some(ResourceType::KeyPair)
        } else if id.starts_with(VolumeId::PREFIX) {
            Some(ResourceType::Volume)
        } else if id.starts_with(SnapshotId::PREFIX) {
            Some(ResourceType::Snapshot)
        } else if id.starts_with(InstanceId::PREFIX) {
            Some(ResourceType::Instance)
        } else if ImageId::parse(id).is_ok()
            || id.starts_with("emi-")
            || id.starts_with("eki-")
            || id.starts_with("eri-")
        {
            Some(ResourceType::Image)
        } else {
            None
        }
    }

    /// The spelling of `resourceType` in DescribeTags.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::SecurityGroup => "security-group",
            ResourceType::KeyPair => "key-pair",
            ResourceType::Image => "image",
            ResourceType::Volume => "volume",
            ResourceType::Snapshot => "snapshot",
            ResourceType::Instance => "instance",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub resource_id: String,
    pub resource_type: ResourceType,
    pub key: String,
    pub value: String,
}

/// An instance size, as Eucalyptus offered them; the operator can change them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmType {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
}

impl VmType {
    /// The classic Eucalyptus table.
    pub fn defaults() -> Vec<VmType> {
        [
            ("m1.small", 1, 256, 5),
            ("c1.medium", 1, 512, 10),
            ("m1.large", 2, 512, 10),
            ("m1.xlarge", 2, 1024, 10),
            ("c1.xlarge", 4, 2048, 10),
        ]
        .into_iter()
        .map(|(n, c, m, d)| VmType {
            name: n.to_string(),
            cpus: c,
            memory_mib: m,
            disk_gib: d,
        })
        .collect()
    }
}

/// What a zone's nodes can hold, summed; used for the admin `verbose` zone view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Capacity {
    /// How many instances of a type fit; the scarcest resource decides.
    pub fn fits(&self, t: &VmType) -> u64 {
        let by_cpu = u64::from(self.cpus) / u64::from(t.cpus.max(1));
        let by_mem = self.memory_mib / u64::from(t.memory_mib.max(1));
        let by_disk = self.disk_gib / u64::from(t.disk_gib.max(1));
        by_cpu.min(by_mem).min(by_disk)
    }
}

/// Civil-time rendering without a date library: EC2 timestamps are always
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn answered_default() -> bool {
    true
}

pub fn iso8601_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_life_cycle_moves() {
        use InstanceState::*;
        assert!(Pending.may_become(Running));
        assert!(Running.may_become(ShuttingDown));
        assert!(ShuttingDown.may_become(Terminated));
        assert!(Pending.may_become(Terminated));
        assert!(!Terminated.may_become(Running));
        assert!(!Running.may_become(Pending));
        assert!(!ShuttingDown.may_become(Running));
        assert_eq!(ShuttingDown.code(), 32);
        assert_eq!(InstanceState::parse("shutting-down"), Some(ShuttingDown));
    }

    #[test]
    fn iso8601_matches_known_instants() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_440_938_160_000), "2015-08-30T12:36:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn capacity_counts_the_scarcest_resource() {
        let c = Capacity {
            cpus: 4,
            memory_mib: 1024,
            disk_gib: 100,
        };
        let t = &VmType::defaults()[0];
        assert_eq!(c.fits(t), 4);
        let big = VmType::defaults().pop().unwrap();
        assert_eq!(c.fits(&big), 0);
    }
}
