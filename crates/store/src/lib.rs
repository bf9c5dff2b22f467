//! The cloud controller's state, behind one [`Store`] trait.
//!
//! The CLC is the only writer of cloud state. It calls the trait's
//! domain-level methods; each method is one transaction, so a check and the
//! change it guards (a duplicate rule, a group still referenced) can never
//! interleave with another request. Backends implement the trait with portable
//! SQL (no SQLite-only syntax) so the PostgreSQL backend planned for multi-host
//! clouds reuses the same statements; [`conformance`] is the test suite every
//! backend must pass.
//!
//! Secrets never reach the store in clear: [`StoredAccessKey`] carries the
//! sealed form made by the application layer.

pub mod conformance;
mod migrations;
mod sqlite;

use async_trait::async_trait;
use ironbark_types::*;

pub use sqlite::SqliteStore;

/// An access key as persisted: the secret is sealed by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAccessKey {
    pub id: AccessKeyId,
    pub account_id: AccountId,
    pub user_name: String,
    pub sealed_secret: String,
    pub active: bool,
    pub created_ms: i64,
}

/// A tag to remove: by key alone, or only when the value also matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

/// Most tags one resource may carry, as in EC2.
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Changes whenever any process commits a change: what in-memory caches
    /// above the store compare against (cheap: no query).
    fn version(&self) -> u64;

    // Accounts, users, access keys.
    /// Creates the account, its first user and that user's key at once, so
    /// an account never exists without a way to use it.
    async fn create_account(
        &self,
        account: &Account,
        user: &User,
        key: &StoredAccessKey,
    ) -> Result<()>;
    async fn account_by_name(&self, name: &str) -> Result<Option<Account>>;
    async fn account_by_id(&self, id: &AccountId) -> Result<Option<Account>>;
    async fn list_accounts(&self) -> Result<Vec<Account>>;
    /// Removes the account and everything it owns. Refused with
    /// `DeleteConflict` while another account's rules name one of its groups.
    async fn delete_account(&self, id: &AccountId) -> Result<()>;
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn list_users(&self, account: &AccountId) -> Result<Vec<User>>;
    async fn insert_access_key(&self, key: &StoredAccessKey) -> Result<()>;
    async fn access_key(&self, id: &AccessKeyId) -> Result<Option<StoredAccessKey>>;
    async fn list_access_keys(&self, account: &AccountId) -> Result<Vec<StoredAccessKey>>;
    async fn delete_access_key(&self, id: &AccessKeyId) -> Result<()>;

    // Key pairs.
    async fn insert_key_pair(&self, kp: &KeyPair) -> Result<()>;
    async fn key_pair_named(&self, account: &AccountId, name: &str) -> Result<Option<KeyPair>>;
    /// `None` lists every account's (the administrator's view).
    async fn list_key_pairs(&self, account: Option<&AccountId>) -> Result<Vec<KeyPair>>;
    /// Returns whether a key pair was removed.
    async fn delete_key_pair(&self, account: &AccountId, name: &str) -> Result<bool>;

    // Security groups.
    async fn insert_group(&self, group: &SecurityGroup) -> Result<()>;
    async fn list_groups(&self, account: Option<&AccountId>) -> Result<Vec<SecurityGroup>>;
    async fn group_by_id(&self, id: &SecurityGroupId) -> Result<Option<SecurityGroup>>;
    async fn group_by_name(&self, account: &AccountId, name: &str)
    -> Result<Option<SecurityGroup>>;
    /// Refused with `InvalidGroup.InUse` while another group's rule names it.
    async fn delete_group(&self, id: &SecurityGroupId) -> Result<()>;
    /// All or nothing: any rule already present is `InvalidPermission.Duplicate`,
    /// a source group that no longer exists is `InvalidGroup.NotFound`.
    async fn add_rules(&self, group: &SecurityGroupId, rules: &[Rule]) -> Result<()>;
    /// All or nothing: any rule absent is `InvalidPermission.NotFound`.
    async fn remove_rules(&self, group: &SecurityGroupId, rules: &[Rule]) -> Result<()>;

    // Images.
    /// Refused with `InvalidAMIName.Duplicate` when the account has an
    /// image of that name.
    async fn insert_image(&self, image: &Image) -> Result<()>;
    /// Every registered image; visibility is the caller's business.
    async fn list_images(&self) -> Result<Vec<Image>>;
    async fn image(&self, id: &ImageId) -> Result<Option<Image>>;
    /// Removes the image, its permissions and tags; false if it was not there.
    async fn delete_image(&self, id: &ImageId) -> Result<bool>;
    /// Replaces who may launch the image.
    async fn set_image_launch(
        &self,
        id: &ImageId,
        public: bool,
        accounts: &[AccountId],
    ) -> Result<()>;
    async fn set_image_description(&self, id: &ImageId, description: &str) -> Result<()>;

    // Instances.
    /// Records a reservation's instances at once.
    async fn insert_instances(&self, instances: &[Instance]) -> Result<()>;
    /// Every instance record (terminated ones until buried); `None` is the
    /// administrator's view.
    async fn list_instances(&self, account: Option<&AccountId>) -> Result<Vec<Instance>>;
    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>>;
    /// Moves an instance to `to` if its state is one of `from`, and returns
    /// the updated record; `None` when it was in another state (the move
    /// lost a race and must not happen).
    async fn transition_instance(
        &self,
        id: &InstanceId,
        from: &[InstanceState],
        to: InstanceState,
        reason: Option<&str>,
        at_ms: i64,
    ) -> Result<Option<Instance>>;
    /// Erases a terminated record (Eucalyptus' BURIED).
    async fn delete_instance(&self, id: &InstanceId) -> Result<bool>;
    /// The segment index of a group, allocating the lowest free one below
    /// `max` the first time. Err `InsufficientInstanceCapacity` when all
    /// are taken.
    async fn segment_of(&self, group: &SecurityGroupId, max: u32) -> Result<u32>;
    async fn segments(&self) -> Result<Vec<(SecurityGroupId, u32)>>;
    /// Frees a group's segment (when no live instance uses it).
    async fn release_segment(&self, group: &SecurityGroupId) -> Result<()>;

    // Tags.
    /// Sets tags on resources owned by `account` (replacing values of
    /// existing keys). Unknown or foreign resources are NotFound errors.
    async fn put_tags(
        &self,
        account: &AccountId,
        resources: &[(String, ResourceType)],
        tags: &[(String, String)],
    ) -> Result<()>;
    /// An empty selector list removes every tag of those resources.
    /// Unknown or foreign resources are NotFound errors.
    async fn delete_tags(
        &self,
        account: &AccountId,
        resources: &[(String, ResourceType)],
        tags: &[TagSelector],
    ) -> Result<()>;
    async fn list_tags(&self, account: Option<&AccountId>) -> Result<Vec<Tag>>;

    // Cloud properties (operator settings).
    // EBS. Rows are written whole (insert or replace of the mutable
    // columns); the CLC serializes changes to one volume under its lock.
    async fn put_volume(&self, volume: &Volume) -> Result<()>;
    async fn list_volumes(&self, account: Option<&AccountId>) -> Result<Vec<Volume>>;
    /// Erases a deleted volume and its tags.
    async fn delete_volume(&self, id: &VolumeId) -> Result<bool>;
    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()>;
    /// Every snapshot: visibility crosses accounts (shared, public).
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>>;
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool>;

    // Elastic IPs.
    /// Records a new allocation; fails if the address is already held.
    async fn insert_address(&self, address: &Address) -> Result<()>;
    async fn list_addresses(&self, account: Option<&AccountId>) -> Result<Vec<Address>>;
    /// Applies an association change in one transaction: address rows
    /// rewritten or deleted, and instances' public IPs set, so an address
    /// is never held by two instances nor an instance left pointing at a
    /// released one.
    async fn write_addresses(&self, change: &AddressChange) -> Result<()>;

    async fn property(&self, name: &str) -> Result<Option<String>>;
    async fn set_property(&self, name: &str, value: &str) -> Result<()>;
    async fn list_properties(&self) -> Result<Vec<(String, String)>>;
}

/// One atomic change to elastic IPs and the public IPs of instances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressChange {
    /// Rows to rewrite (matched by public IP; they must exist).
    pub update: Vec<Address>,
    /// Public IPs of rows to delete (released addresses).
    pub delete: Vec<String>,
    /// Instances whose public IP changes.
    pub instance_ips: Vec<(InstanceId, Option<String>)>,
}
