//! The embedded backend: one SQLite file in the data dir, in WAL mode with
//! full fsync so an acknowledged change survives a crash or power loss.
//!
//! Writers are serialised in-process by a mutex: SQLite has one writer
//! anyway, and taking the lock before `BEGIN` avoids the busy-upgrade
//! failures a deferred transaction can hit when two start together. Other
//! processes (the admin CLI) are covered by the busy timeout.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ironbark_types::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::Mutex;

use crate::migrations::MIGRATIONS;
use crate::{AddressChange, MAX_TAGS_PER_RESOURCE, Store, StoredAccessKey, TagSelector};

pub struct SqliteStore {
    pool: SqlitePool,
    write: Mutex<()>,
    /// Commits made by this process.
    local_changes: AtomicU64,
    /// Replaced (new inode) after every commit, so other processes sharing
    /// the database notice with one stat() that cached state is stale.
    marker: Option<PathBuf>,
}

fn db(e: sqlx::Error) -> Error {
    Error::internal(format!("state database: {e}"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // WAL is a property of the file, and switching a fresh file to it
        // needs the database to itself: do it on one connection before the
        // pool opens several that would race to switch it.
        {
            use sqlx::Connection as _;
            let first = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(db)?;
            first.close().await.map_err(db)?;
        }
        let mut s = Self::with_options(opts, 4).await?;
        s.marker = Some(path.with_extension("version"));
        s.changed();
        Ok(s)
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:").map_err(db)?;
        // One connection: each in-memory connection would be its own database.
        Self::with_options(opts, 1).await
    }

    async fn with_options(opts: SqliteConnectOptions, max: u32) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(db)?;
        let store = SqliteStore {
            pool,
            write: Mutex::new(()),
            local_changes: AtomicU64::new(0),
            marker: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await.map_err(db)?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            self.commit(tx).await?;
            tracing::info!(version, "applied state migration");
        }
        Ok(())
    }

    async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<()> {
        tx.commit().await.map_err(db)?;
        self.changed();
        Ok(())
    }

    fn changed(&self) {
        self.local_changes.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = &self.marker {
            // A failure only costs other processes a cache refresh they
            // would get from their time limit anyway.
            let tmp = m.with_extension(format!("version.{}", std::process::id()));
            // Unique content: inode numbers and coarse mtimes can repeat.
            let stamp = format!(
                "{}-{}-{}",
                std::process::id(),
                self.local_changes.load(Ordering::SeqCst),
                now_ms()
            );
            if std::fs::write(&tmp, stamp).is_ok() {
                let _ = std::fs::rename(&tmp, m);
            }
        }
    }

    /// `select` narrowed to one account's rows (all when `None`), in
    /// `order`: the shape of every per-account listing.
    async fn scoped_rows(
        &self,
        select: &str,
        order: &str,
        account: Option<&AccountId>,
    ) -> Result<Vec<SqliteRow>> {
        match account {
            Some(a) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{select} WHERE account_id = $1 ORDER BY {order}"
                )))
                .bind(a.as_str())
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{select} ORDER BY {order}")))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db)
    }

    /// Deletes the row `id` of `table` and its tags in one transaction;
    /// whether the row existed.
    async fn delete_with_tags(&self, table: &str, id: &str) -> Result<bool> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE id = $1"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        sqlx::query("DELETE FROM tags WHERE resource_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx).await?;
        Ok(n > 0)
    }

    async fn begin(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, Transaction<'_, Sqlite>)> {
        let guard = self.write.lock().await;
        let tx = self.pool.begin().await.map_err(db)?;
        Ok((guard, tx))
    }
}

fn account_row(r: &SqliteRow) -> Result<Account> {
    Ok(Account {
        id: AccountId::from_stored(r.try_get::<String, _>("id").map_err(db)?),
        name: r.try_get("name").map_err(db)?,
        created_ms: r.try_get("created_ms").map_err(db)?,
    })
}

fn key_row(r: &SqliteRow) -> Result<StoredAccessKey> {
    Ok(StoredAccessKey {
        id: AccessKeyId::from_stored(r.try_get::<String, _>("id").map_err(db)?),
        account_id: AccountId::from_stored(r.try_get::<String, _>("account_id").map_err(db)?),
        user_name: r.try_get("user_name").map_err(db)?,
        sealed_secret: r.try_get("sealed_secret").map_err(db)?,
        active: r.try_get::<i64, _>("active").map_err(db)? != 0,
        created_ms: r.try_get("created_ms").map_err(db)?,
    })
}

fn key_pair_row(r: &SqliteRow) -> Result<KeyPair> {
    Ok(KeyPair {
        id: KeyPairId::from_stored(r.try_get::<String, _>("id").map_err(db)?),
        account_id: AccountId::from_stored(r.try_get::<String, _>("account_id").map_err(db)?),
        name: r.try_get("name").map_err(db)?,
        fingerprint: r.try_get("fingerprint").map_err(db)?,
        key_type: r.try_get("key_type").map_err(db)?,
        public_key: r.try_get("public_key").map_err(db)?,
        created_ms: r.try_get("created_ms").map_err(db)?,
    })
}

fn group_row(r: &SqliteRow) -> Result<SecurityGroup> {
    Ok(SecurityGroup {
        id: SecurityGroupId::from_stored(r.try_get::<String, _>("id").map_err(db)?),
        account_id: AccountId::from_stored(r.try_get::<String, _>("account_id").map_err(db)?),
        name: r.try_get("name").map_err(db)?,
        description: r.try_get("description").map_err(db)?,
        rules: Vec::new(),
        created_ms: r.try_get("created_ms").map_err(db)?,
    })
}

fn image_row(r: &SqliteRow) -> Result<Image> {
    let opt_id = |col: &str| -> Result<Option<ImageId>> {
        let v: String = r.try_get(col).map_err(db)?;
        Ok((!v.is_empty()).then(|| ImageId::from_stored(v)))
    };
    Ok(Image {
        id: ImageId::from_stored(r.try_get::<String, _>("id").map_err(db)?),
        account_id: AccountId::from_stored(r.try_get::<String, _>("account_id").map_err(db)?),
        name: r.try_get("name").map_err(db)?,
        description: r.try_get("description").map_err(db)?,
        location: r.try_get("location").map_err(db)?,
        size: r.try_get::<i64, _>("size").map_err(db)? as u64,
        sha256: r.try_get("sha256").map_err(db)?,
        kernel_id: opt_id("kernel_id")?,
        ramdisk_id: opt_id("ramdisk_id")?,
        architecture: r.try_get("architecture").map_err(db)?,
        public: r.try_get::<i64, _>("public").map_err(db)? != 0,
        launch_permissions: Vec::new(),
        created_ms: r.try_get("created_ms").map_err(db)?,
    })
}

fn instance_row(r: &SqliteRow) -> Result<Instance> {
    let text = |c: &str| -> Result<String> { r.try_get::<String, _>(c).map_err(db) };
    let opt = |c: &str| -> Result<Option<String>> {
        let v = text(c)?;
        Ok((!v.is_empty()).then_some(v))
    };
    let terminated: i64 = r.try_get("terminated_ms").map_err(db)?;
    Ok(Instance {
        id: InstanceId::from_stored(text("id")?),
        reservation_id: ReservationId::from_stored(text("reservation_id")?),
        account_id: AccountId::from_stored(text("account_id")?),
        image_id: ImageId::from_stored(text("image_id")?),
        kernel_id: opt("kernel_id")?.map(ImageId::from_stored),
        ramdisk_id: opt("ramdisk_id")?.map(ImageId::from_stored),
        instance_type: text("instance_type")?,
        key_name: opt("key_name")?,
        group_id: SecurityGroupId::from_stored(text("group_id")?),
        group_name: text("group_name")?,
        user_data: opt("user_data")?,
        zone: text("zone")?,
        node_id: text("node_id")?,
        private_ip: text("private_ip")?,
        mac: text("mac")?,
        public_ip: opt("public_ip")?,
        state: InstanceState::parse(&text("state")?)
            .ok_or_else(|| Error::internal("unknown instance state in store"))?,
        state_reason: opt("state_reason")?,
        launch_index: r.try_get::<i64, _>("launch_index").map_err(db)? as u32,
        launch_ms: r.try_get("launch_ms").map_err(db)?,
        terminated_ms: (terminated > 0).then_some(terminated),
    })
}

fn address_row(r: &SqliteRow) -> Result<Address> {
    let text = |c: &str| -> Result<String> { r.try_get::<String, _>(c).map_err(db) };
    let opt = |c: &str| -> Result<Option<String>> {
        let v = text(c)?;
        Ok((!v.is_empty()).then_some(v))
    };
    Ok(Address {
        public_ip: text("public_ip")?,
        allocation_id: AllocationId::from_stored(text("allocation_id")?),
        account_id: AccountId::from_stored(text("account_id")?),
        instance_id: opt("instance_id")?.map(InstanceId::from_stored),
        association_id: opt("association_id")?.map(AssociationId::from_stored),
        restore_ip: opt("restore_ip")?,
        allocated_ms: r.try_get("allocated_ms").map_err(db)?,
    })
}

fn volume_row(r: &SqliteRow) -> Result<Volume> {
    let text = |c: &str| -> Result<String> { r.try_get::<String, _>(c).map_err(db) };
    let opt = |c: &str| -> Result<Option<String>> {
        let v = text(c)?;
        Ok((!v.is_empty()).then_some(v))
    };
    let bad = |c: &str, v: &str| Error::internal(format!("state database: bad {c} '{v}'"));
    let state = text("state")?;
    let attachment = match opt("attach_instance")? {
        None => None,
        Some(inst) => {
            let st = text("attach_state")?;
            Some(VolumeAttachment {
                instance_id: InstanceId::from_stored(inst),
                device: text("attach_device")?,
                state: AttachState::parse(&st).ok_or_else(|| bad("attach_state", &st))?,
                attach_ms: r.try_get("attach_ms").map_err(db)?,
                force_detach: r.try_get::<i64, _>("force_detach").map_err(db)? != 0,
            })
        }
    };
    Ok(Volume {
        id: VolumeId::from_stored(text("id")?),
        account_id: AccountId::from_stored(text("account_id")?),
        size_gib: r.try_get::<i64, _>("size_gib").map_err(db)? as u32,
        snapshot_id: opt("snapshot_id")?.map(SnapshotId::from_stored),
        zone: text("zone")?,
        state: VolumeState::parse(&state).ok_or_else(|| bad("state", &state))?,
        error: opt("error")?,
        created_ms: r.try_get("created_ms").map_err(db)?,
        attachment,
    })
}

const VOLUME_SELECT: &str = "SELECT id, account_id, size_gib, snapshot_id, zone, state, error, created_ms, attach_instance, attach_device, attach_state, attach_ms, force_detach FROM volumes";

fn snapshot_row(r: &SqliteRow) -> Result<Snapshot> {
    let text = |c: &str| -> Result<String> { r.try_get::<String, _>(c).map_err(db) };
    let opt = |c: &str| -> Result<Option<String>> {
        let v = text(c)?;
        Ok((!v.is_empty()).then_some(v))
    };
    let state = text("state")?;
    let shared = text("shared_with")?;
    Ok(Snapshot {
        id: SnapshotId::from_stored(text("id")?),
        account_id: AccountId::from_stored(text("account_id")?),
        volume_id: VolumeId::from_stored(text("volume_id")?),
        volume_size_gib: r.try_get::<i64, _>("volume_size_gib").map_err(db)? as u32,
        description: text("description")?,
        state: SnapshotState::parse(&state)
            .ok_or_else(|| Error::internal(format!("state database: bad state '{state}'")))?,
        progress: r.try_get::<i64, _>("progress").map_err(db)?.clamp(0, 100) as u8,
        started_ms: r.try_get("started_ms").map_err(db)?,
        location: text("location")?,
        compression: text("compression")?,
        sha256: opt("sha256")?,
        raw_digest: opt("raw_digest")?,
        error: opt("error")?,
        upload_id: opt("upload_id")?,
        answered: r.try_get::<i64, _>("answered").map_err(db)? != 0,
        public: r.try_get::<i64, _>("public").map_err(db)? != 0,
        shared_with: shared
            .split(',')
            .filter(|s| !s.is_empty())
            .map(AccountId::from_stored)
            .collect(),
    })
}

const SNAPSHOT_SELECT: &str = "SELECT id, account_id, volume_id, volume_size_gib, description, state, progress, started_ms, location, compression, sha256, raw_digest, error, public, shared_with, upload_id, answered FROM snapshots";

const ADDRESS_SELECT: &str = "SELECT public_ip, allocation_id, account_id, instance_id, association_id, restore_ip, allocated_ms FROM addresses";

const INSTANCE_SELECT: &str = "SELECT id, reservation_id, account_id, image_id, kernel_id, ramdisk_id, instance_type, key_name, group_id, group_name, user_data, zone, node_id, private_ip, mac, public_ip, state, state_reason, launch_index, launch_ms, terminated_ms FROM instances";

/// A rule row joined with its source group (if any) for the owner and name.
fn rule_row(r: &SqliteRow) -> Result<(SecurityGroupId, Rule)> {
    let group = SecurityGroupId::from_stored(r.try_get::<String, _>("group_id").map_err(db)?);
    let protocol = Protocol::parse(&r.try_get::<String, _>("protocol").map_err(db)?)?;
    let cidr: String = r.try_get("cidr").map_err(db)?;
    let src: String = r.try_get("source_group_id").map_err(db)?;
    let source = if src.is_empty() {
        RuleSource::Cidr(cidr.parse()?)
    } else {
        RuleSource::Group {
            account_id: AccountId::from_stored(
                r.try_get::<Option<String>, _>("src_account")
                    .map_err(db)?
                    .unwrap_or_default(),
            ),
            group_id: SecurityGroupId::from_stored(src),
            group_name: r
                .try_get::<Option<String>, _>("src_name")
                .map_err(db)?
                .unwrap_or_default(),
        }
    };
    Ok((
        group,
        Rule {
            protocol,
            from_port: r.try_get::<i64, _>("from_port").map_err(db)? as i32,
            to_port: r.try_get::<i64, _>("to_port").map_err(db)? as i32,
            source,
        },
    ))
}

fn rule_key(rule: &Rule) -> (String, String) {
    match &rule.source {
        RuleSource::Cidr(c) => (c.to_string(), String::new()),
        RuleSource::Group { group_id, .. } => (String::new(), group_id.to_string()),
    }
}

fn resource_type_str(t: ResourceType) -> &'static str {
    t.as_str()
}

fn resource_type_parse(s: &str) -> Result<ResourceType> {
    match s {
        "security-group" => Ok(ResourceType::SecurityGroup),
        "key-pair" => Ok(ResourceType::KeyPair),
        "image" => Ok(ResourceType::Image),
        "volume" => Ok(ResourceType::Volume),
        "snapshot" => Ok(ResourceType::Snapshot),
        "instance" => Ok(ResourceType::Instance),
        other => Err(Error::internal(format!(
            "unknown resource type {other} in store"
        ))),
    }
}

const RULES_SELECT: &str = "SELECT r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id, \
     s.account_id AS src_account, s.name AS src_name \
     FROM security_group_rules r LEFT JOIN security_groups s ON s.id = r.source_group_id";

impl SqliteStore {
    async fn with_permissions(&self, mut images: Vec<Image>) -> Result<Vec<Image>> {
        let rows = sqlx::query(
            "SELECT image_id, account_id FROM image_launch_permissions ORDER BY account_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for r in &rows {
            let img: String = r.try_get("image_id").map_err(db)?;
            let acct: String = r.try_get("account_id").map_err(db)?;
            if let Some(i) = images.iter_mut().find(|i| i.id.as_str() == img) {
                i.launch_permissions.push(AccountId::from_stored(acct));
            }
        }
        Ok(images)
    }

    /// Loads the rules of the listed groups: only the account's when the
    /// listing is scoped to one, so a call costs what that account holds.
    async fn attach_rules(
        &self,
        mut groups: Vec<SecurityGroup>,
        account: Option<&AccountId>,
    ) -> Result<Vec<SecurityGroup>> {
        if groups.is_empty() {
            return Ok(groups);
        }
        let rows = match account {
            Some(a) => sqlx::query(
                "SELECT r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id, \
                 s.account_id AS src_account, s.name AS src_name \
                 FROM security_group_rules r LEFT JOIN security_groups s ON s.id = r.source_group_id \
                 WHERE r.group_id IN (SELECT id FROM security_groups WHERE account_id = $1)",
            )
            .bind(a.as_str())
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query(RULES_SELECT).fetch_all(&self.pool).await,
        }
        .map_err(db)?;
        let mut by_group: std::collections::HashMap<SecurityGroupId, Vec<Rule>> =
            std::collections::HashMap::new();
        for r in &rows {
            let (g, rule) = rule_row(r)?;
            by_group.entry(g).or_default().push(rule);
        }
        for g in &mut groups {
            let mut rules = by_group.remove(&g.id).unwrap_or_default();
            rules.sort();
            g.rules = rules;
        }
        Ok(groups)
    }

    async fn attach_rules_one(&self, g: Option<SecurityGroup>) -> Result<Option<SecurityGroup>> {
        let Some(mut g) = g else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id, \
             s.account_id AS src_account, s.name AS src_name \
             FROM security_group_rules r LEFT JOIN security_groups s ON s.id = r.source_group_id \
             WHERE r.group_id = $1",
        )
        .bind(g.id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut rules = rows
            .iter()
            .map(|r| rule_row(r).map(|(_, rule)| rule))
            .collect::<Result<Vec<_>>>()?;
        rules.sort();
        g.rules = rules;
        Ok(Some(g))
    }
}

async fn rule_exists(
    tx: &mut Transaction<'_, Sqlite>,
    group: &SecurityGroupId,
    rule: &Rule,
) -> Result<bool> {
    let (cidr, src) = rule_key(rule);
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM security_group_rules WHERE group_id = $1 AND protocol = $2 \
         AND from_port = $3 AND to_port = $4 AND cidr = $5 AND source_group_id = $6",
    )
    .bind(group.as_str())
    .bind(rule.protocol.as_str())
    .bind(i64::from(rule.from_port))
    .bind(i64::from(rule.to_port))
    .bind(cidr)
    .bind(src)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    Ok(n > 0)
}

async fn group_exists(tx: &mut Transaction<'_, Sqlite>, id: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM security_groups WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n > 0)
}

async fn resource_owned(
    tx: &mut Transaction<'_, Sqlite>,
    account: &AccountId,
    id: &str,
    t: ResourceType,
) -> Result<bool> {
    let sql = match t {
        ResourceType::SecurityGroup => {
            "SELECT COUNT(*) FROM security_groups WHERE id = $1 AND account_id = $2"
        }
        ResourceType::KeyPair => "SELECT COUNT(*) FROM key_pairs WHERE id = $1 AND account_id = $2",
        ResourceType::Image => "SELECT COUNT(*) FROM images WHERE id = $1 AND account_id = $2",
        ResourceType::Volume => "SELECT COUNT(*) FROM volumes WHERE id = $1 AND account_id = $2",
        ResourceType::Snapshot => {
            "SELECT COUNT(*) FROM snapshots WHERE id = $1 AND account_id = $2"
        }
        ResourceType::Instance => {
            "SELECT COUNT(*) FROM instances WHERE id = $1 AND account_id = $2"
        }
    };
    let n: i64 = sqlx::query_scalar(sql)
        .bind(id)
        .bind(account.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n > 0)
}

fn not_found_for(id: &str, t: ResourceType) -> Error {
    match t {
        ResourceType::SecurityGroup => Error::new(
            ErrorKind::GroupNotFound,
            format!("The security group '{id}' does not exist"),
        ),
        ResourceType::KeyPair => Error::new(
            ErrorKind::KeyPairNotFound,
            format!("The key pair '{id}' does not exist"),
        ),
        ResourceType::Image => Error::new(
            ErrorKind::ImageNotFound,
            format!("The image id '[{id}]' does not exist"),
        ),
        ResourceType::Volume => Error::new(
            ErrorKind::VolumeNotFound,
            format!("The volume '{id}' does not exist."),
        ),
        ResourceType::Snapshot => Error::new(
            ErrorKind::SnapshotNotFound,
            format!("The snapshot '{id}' does not exist."),
        ),
        ResourceType::Instance => Error::new(
            ErrorKind::InstanceNotFound,
            format!("The instance ID '{id}' does not exist"),
        ),
    }
}

async fn insert_access_key_tx(
    tx: &mut Transaction<'_, Sqlite>,
    key: &StoredAccessKey,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO access_keys (id, account_id, user_name, sealed_secret, active, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.id.as_str())
    .bind(key.account_id.as_str())
    .bind(&key.user_name)
    .bind(&key.sealed_secret)
    .bind(i64::from(key.active))
    .bind(key.created_ms)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::new(
                ErrorKind::AccessKeyDuplicate,
                format!("Access key {} already exists", key.id),
            )
        } else {
            db(e)
        }
    })?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn version(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.local_changes.load(Ordering::SeqCst).hash(&mut h);
        if let Some(m) = &self.marker {
            std::fs::read(m).unwrap_or_default().hash(&mut h);
        }
        h.finish()
    }

    async fn create_account(
        &self,
        account: &Account,
        user: &User,
        key: &StoredAccessKey,
    ) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query("INSERT INTO accounts (id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(account.id.as_str())
            .bind(&account.name)
            .bind(account.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::new(
                        ErrorKind::AccountDuplicate,
                        format!("Account '{}' already exists", account.name),
                    )
                } else {
                    db(e)
                }
            })?;
        sqlx::query("INSERT INTO users (account_id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(user.account_id.as_str())
            .bind(&user.name)
            .bind(user.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        insert_access_key_tx(&mut tx, key).await?;
        self.commit(tx).await
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT id, name, created_ms FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(account_row).transpose()
    }

    async fn account_by_id(&self, id: &AccountId) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT id, name, created_ms FROM accounts WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(account_row).transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        let rows = sqlx::query("SELECT id, name, created_ms FROM accounts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(account_row).collect()
    }

    async fn delete_account(&self, id: &AccountId) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let foreign: Option<String> = sqlx::query_scalar(
            "SELECT g.account_id FROM security_group_rules r \
             JOIN security_groups s ON s.id = r.source_group_id \
             JOIN security_groups g ON g.id = r.group_id \
             WHERE s.account_id = $1 AND g.account_id <> $1 LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(other) = foreign {
            return Err(Error::new(
                ErrorKind::DeleteConflict,
                format!(
                    "A security group of account {other} has rules naming this account's groups"
                ),
            ));
        }
        for sql in [
            "DELETE FROM security_group_rules WHERE group_id IN (SELECT id FROM security_groups WHERE account_id = $1)",
            "DELETE FROM security_groups WHERE account_id = $1",
            "DELETE FROM key_pairs WHERE account_id = $1",
            "DELETE FROM tags WHERE account_id = $1",
            "DELETE FROM image_launch_permissions WHERE image_id IN (SELECT id FROM images WHERE account_id = $1)",
            "DELETE FROM image_launch_permissions WHERE account_id = $1",
            "DELETE FROM images WHERE account_id = $1",
            "DELETE FROM instances WHERE account_id = $1",
            "DELETE FROM access_keys WHERE account_id = $1",
            "DELETE FROM users WHERE account_id = $1",
            "DELETE FROM accounts WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query("INSERT INTO users (account_id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(user.account_id.as_str())
            .bind(&user.name)
            .bind(user.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::new(
                        ErrorKind::UserDuplicate,
                        format!("User '{}' already exists", user.name),
                    )
                } else {
                    db(e)
                }
            })?;
        self.commit(tx).await
    }

    async fn list_users(&self, account: &AccountId) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT account_id, name, created_ms FROM users WHERE account_id = $1 ORDER BY name",
        )
        .bind(account.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    account_id: AccountId::from_stored(
                        r.try_get::<String, _>("account_id").map_err(db)?,
                    ),
                    name: r.try_get("name").map_err(db)?,
                    created_ms: r.try_get("created_ms").map_err(db)?,
                })
            })
            .collect()
    }

    async fn insert_access_key(&self, key: &StoredAccessKey) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let user: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE account_id = $1 AND name = $2")
                .bind(key.account_id.as_str())
                .bind(&key.user_name)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if user == 0 {
            return Err(Error::new(
                ErrorKind::UserNotFound,
                format!("User '{}' does not exist", key.user_name),
            ));
        }
        insert_access_key_tx(&mut tx, key).await?;
        self.commit(tx).await
    }

    async fn access_key(&self, id: &AccessKeyId) -> Result<Option<StoredAccessKey>> {
        let row = sqlx::query(
            "SELECT id, account_id, user_name, sealed_secret, active, created_ms FROM access_keys WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(key_row).transpose()
    }

    async fn list_access_keys(&self, account: &AccountId) -> Result<Vec<StoredAccessKey>> {
        let rows = sqlx::query(
            "SELECT id, account_id, user_name, sealed_secret, active, created_ms FROM access_keys \
             WHERE account_id = $1 ORDER BY created_ms, id",
        )
        .bind(account.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(key_row).collect()
    }

    async fn delete_access_key(&self, id: &AccessKeyId) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("DELETE FROM access_keys WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(Error::new(
                ErrorKind::AccessKeyNotFound,
                format!("Access key {id} does not exist"),
            ));
        }
        self.commit(tx).await
    }

    async fn insert_key_pair(&self, kp: &KeyPair) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO key_pairs (id, account_id, name, fingerprint, key_type, public_key, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(kp.id.as_str())
        .bind(kp.account_id.as_str())
        .bind(&kp.name)
        .bind(&kp.fingerprint)
        .bind(&kp.key_type)
        .bind(&kp.public_key)
        .bind(kp.created_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::new(
                    ErrorKind::KeyPairDuplicate,
                    format!("The keypair '{}' already exists.", kp.name),
                )
            } else {
                db(e)
            }
        })?;
        self.commit(tx).await
    }

    async fn key_pair_named(&self, account: &AccountId, name: &str) -> Result<Option<KeyPair>> {
        let row = sqlx::query(
            "SELECT id, account_id, name, fingerprint, key_type, public_key, created_ms \
             FROM key_pairs WHERE account_id = $1 AND name = $2",
        )
        .bind(account.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(key_pair_row).transpose()
    }

    async fn list_key_pairs(&self, account: Option<&AccountId>) -> Result<Vec<KeyPair>> {
        let rows =
            match account {
                Some(a) => sqlx::query(
                    "SELECT id, account_id, name, fingerprint, key_type, public_key, created_ms \
                 FROM key_pairs WHERE account_id = $1 ORDER BY name",
                )
                .bind(a.as_str())
                .fetch_all(&self.pool)
                .await,
                None => sqlx::query(
                    "SELECT id, account_id, name, fingerprint, key_type, public_key, created_ms \
                 FROM key_pairs ORDER BY account_id, name",
                )
                .fetch_all(&self.pool)
                .await,
            }
            .map_err(db)?;
        rows.iter().map(key_pair_row).collect()
    }

    async fn delete_key_pair(&self, account: &AccountId, name: &str) -> Result<bool> {
        let (_g, mut tx) = self.begin().await?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM key_pairs WHERE account_id = $1 AND name = $2")
                .bind(account.as_str())
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some(id) = id else { return Ok(false) };
        sqlx::query("DELETE FROM tags WHERE resource_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM key_pairs WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn insert_group(&self, group: &SecurityGroup) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO security_groups (id, account_id, name, description, created_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(group.id.as_str())
        .bind(group.account_id.as_str())
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.created_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::new(
                    ErrorKind::GroupDuplicate,
                    format!("The security group '{}' already exists", group.name),
                )
            } else {
                db(e)
            }
        })?;
        for rule in &group.rules {
            insert_rule(&mut tx, &group.id, rule).await?;
        }
        self.commit(tx).await
    }

    async fn list_groups(&self, account: Option<&AccountId>) -> Result<Vec<SecurityGroup>> {
        let rows = self
            .scoped_rows(
                "SELECT id, account_id, name, description, created_ms FROM security_groups",
                "account_id, name",
                account,
            )
            .await?;
        let groups = rows.iter().map(group_row).collect::<Result<Vec<_>>>()?;
        self.attach_rules(groups, account).await
    }

    async fn group_by_id(&self, id: &SecurityGroupId) -> Result<Option<SecurityGroup>> {
        let row = sqlx::query(
            "SELECT id, account_id, name, description, created_ms FROM security_groups WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let g = row.as_ref().map(group_row).transpose()?;
        self.attach_rules_one(g).await
    }

    async fn group_by_name(
        &self,
        account: &AccountId,
        name: &str,
    ) -> Result<Option<SecurityGroup>> {
        let row = sqlx::query(
            "SELECT id, account_id, name, description, created_ms FROM security_groups \
             WHERE account_id = $1 AND name = $2",
        )
        .bind(account.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let g = row.as_ref().map(group_row).transpose()?;
        self.attach_rules_one(g).await
    }

    async fn delete_group(&self, id: &SecurityGroupId) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        if !group_exists(&mut tx, id.as_str()).await? {
            return Err(not_found_for(id.as_str(), ResourceType::SecurityGroup));
        }
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT group_id FROM security_group_rules \
             WHERE source_group_id = $1 AND group_id <> $1 ORDER BY group_id",
        )
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if !users.is_empty() {
            return Err(Error::new(
                ErrorKind::GroupInUse,
                format!("Group {id} is used by groups: {}", users.join(" ")),
            ));
        }
        for sql in [
            "DELETE FROM security_group_rules WHERE group_id = $1",
            "DELETE FROM tags WHERE resource_id = $1",
            "DELETE FROM security_groups WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn add_rules(&self, group: &SecurityGroupId, rules: &[Rule]) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        if !group_exists(&mut tx, group.as_str()).await? {
            return Err(not_found_for(group.as_str(), ResourceType::SecurityGroup));
        }
        for rule in rules {
            if rule_exists(&mut tx, group, rule).await? {
                return Err(Error::new(
                    ErrorKind::PermissionDuplicate,
                    format!("the specified rule \"{}\" already exists", rule.describe()),
                ));
            }
            if let RuleSource::Group { group_id, .. } = &rule.source
                && !group_exists(&mut tx, group_id.as_str()).await?
            {
                return Err(not_found_for(
                    group_id.as_str(),
                    ResourceType::SecurityGroup,
                ));
            }
            insert_rule(&mut tx, group, rule).await?;
        }
        self.commit(tx).await
    }

    async fn remove_rules(&self, group: &SecurityGroupId, rules: &[Rule]) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        if !group_exists(&mut tx, group.as_str()).await? {
            return Err(not_found_for(group.as_str(), ResourceType::SecurityGroup));
        }
        for rule in rules {
            let (cidr, src) = rule_key(rule);
            let n = sqlx::query(
                "DELETE FROM security_group_rules WHERE group_id = $1 AND protocol = $2 \
                 AND from_port = $3 AND to_port = $4 AND cidr = $5 AND source_group_id = $6",
            )
            .bind(group.as_str())
            .bind(rule.protocol.as_str())
            .bind(i64::from(rule.from_port))
            .bind(i64::from(rule.to_port))
            .bind(cidr)
            .bind(src)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::PermissionNotFound,
                    format!(
                        "The specified rule does not exist in this security group: {}",
                        rule.describe()
                    ),
                ));
            }
        }
        self.commit(tx).await
    }

    async fn insert_image(&self, image: &Image) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO images (id, account_id, name, description, location, size, sha256, kernel_id, ramdisk_id, architecture, public, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(image.id.as_str())
        .bind(image.account_id.as_str())
        .bind(&image.name)
        .bind(&image.description)
        .bind(&image.location)
        .bind(image.size as i64)
        .bind(&image.sha256)
        .bind(image.kernel_id.as_ref().map(|k| k.as_str()).unwrap_or(""))
        .bind(image.ramdisk_id.as_ref().map(|k| k.as_str()).unwrap_or(""))
        .bind(&image.architecture)
        .bind(i64::from(image.public))
        .bind(image.created_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::new(
                    ErrorKind::ImageNameDuplicate,
                    format!("AMI name {} is already in use by AMI {}", image.name, image.id),
                )
            } else {
                db(e)
            }
        })?;
        for a in &image.launch_permissions {
            sqlx::query(
                "INSERT INTO image_launch_permissions (image_id, account_id) VALUES ($1, $2)",
            )
            .bind(image.id.as_str())
            .bind(a.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let rows = sqlx::query(
            "SELECT id, account_id, name, description, location, size, sha256, kernel_id, ramdisk_id, architecture, public, created_ms \
             FROM images ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let images = rows.iter().map(image_row).collect::<Result<Vec<_>>>()?;
        self.with_permissions(images).await
    }

    async fn image(&self, id: &ImageId) -> Result<Option<Image>> {
        let row = sqlx::query(
            "SELECT id, account_id, name, description, location, size, sha256, kernel_id, ramdisk_id, architecture, public, created_ms \
             FROM images WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(img) = row.as_ref().map(image_row).transpose()? else {
            return Ok(None);
        };
        Ok(self.with_permissions(vec![img]).await?.pop())
    }

    async fn delete_image(&self, id: &ImageId) -> Result<bool> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("DELETE FROM images WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        for sql in [
            "DELETE FROM image_launch_permissions WHERE image_id = $1",
            "DELETE FROM tags WHERE resource_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        self.commit(tx).await?;
        Ok(n > 0)
    }

    async fn set_image_launch(
        &self,
        id: &ImageId,
        public: bool,
        accounts: &[AccountId],
    ) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("UPDATE images SET public = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(i64::from(public))
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(not_found_for(id.as_str(), ResourceType::Image));
        }
        sqlx::query("DELETE FROM image_launch_permissions WHERE image_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for a in accounts {
            sqlx::query(
                "INSERT INTO image_launch_permissions (image_id, account_id) VALUES ($1, $2)",
            )
            .bind(id.as_str())
            .bind(a.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn set_image_description(&self, id: &ImageId, description: &str) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("UPDATE images SET description = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(description)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(not_found_for(id.as_str(), ResourceType::Image));
        }
        self.commit(tx).await
    }

    async fn insert_instances(&self, instances: &[Instance]) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        for i in instances {
            sqlx::query(
                "INSERT INTO instances (id, reservation_id, account_id, image_id, kernel_id, ramdisk_id, instance_type, key_name, group_id, group_name, user_data, zone, node_id, private_ip, mac, public_ip, state, state_reason, launch_index, launch_ms, terminated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            )
            .bind(i.id.as_str())
            .bind(i.reservation_id.as_str())
            .bind(i.account_id.as_str())
            .bind(i.image_id.as_str())
            .bind(i.kernel_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
            .bind(i.ramdisk_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
            .bind(&i.instance_type)
            .bind(i.key_name.as_deref().unwrap_or(""))
            .bind(i.group_id.as_str())
            .bind(&i.group_name)
            .bind(i.user_data.as_deref().unwrap_or(""))
            .bind(&i.zone)
            .bind(&i.node_id)
            .bind(&i.private_ip)
            .bind(&i.mac)
            .bind(i.public_ip.as_deref().unwrap_or(""))
            .bind(i.state.as_str())
            .bind(i.state_reason.as_deref().unwrap_or(""))
            .bind(i64::from(i.launch_index))
            .bind(i.launch_ms)
            .bind(i.terminated_ms.unwrap_or(0))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn list_instances(&self, account: Option<&AccountId>) -> Result<Vec<Instance>> {
        let rows = self
            .scoped_rows(
                INSTANCE_SELECT,
                "launch_ms, reservation_id, launch_index",
                account,
            )
            .await?;
        rows.iter().map(instance_row).collect()
    }

    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(instance_row).transpose()
    }

    async fn transition_instance(
        &self,
        id: &InstanceId,
        from: &[InstanceState],
        to: InstanceState,
        reason: Option<&str>,
        at_ms: i64,
    ) -> Result<Option<Instance>> {
        let (_g, mut tx) = self.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(mut inst) = row.as_ref().map(instance_row).transpose()? else {
            return Ok(None);
        };
        if !from.contains(&inst.state) {
            return Ok(None);
        }
        inst.state = to;
        if let Some(r) = reason {
            inst.state_reason = Some(r.to_string());
        }
        if to == InstanceState::Terminated {
            inst.terminated_ms = Some(at_ms);
        }
        sqlx::query(
            "UPDATE instances SET state = $2, state_reason = $3, terminated_ms = $4 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(inst.state.as_str())
        .bind(inst.state_reason.as_deref().unwrap_or(""))
        .bind(inst.terminated_ms.unwrap_or(0))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.commit(tx).await?;
        Ok(Some(inst))
    }

    async fn delete_instance(&self, id: &InstanceId) -> Result<bool> {
        self.delete_with_tags("instances", id.as_str()).await
    }

    async fn segment_of(&self, group: &SecurityGroupId, max: u32) -> Result<u32> {
        let (_g, mut tx) = self.begin().await?;
        let have: Option<i64> = sqlx::query_scalar("SELECT idx FROM segments WHERE group_id = $1")
            .bind(group.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if let Some(i) = have {
            return Ok(i as u32);
        }
        let used: Vec<i64> = sqlx::query_scalar("SELECT idx FROM segments ORDER BY idx")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let free = (0..i64::from(max))
            .find(|i| used.binary_search(i).is_err())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InsufficientInstanceCapacity,
                    "Every network segment of this zone is in use (VNET_SUBNET or VNET_TAGS is used up)",
                )
            })?;
        sqlx::query("INSERT INTO segments (group_id, idx) VALUES ($1, $2)")
            .bind(group.as_str())
            .bind(free)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx).await?;
        Ok(free as u32)
    }

    async fn segments(&self) -> Result<Vec<(SecurityGroupId, u32)>> {
        let rows = sqlx::query("SELECT group_id, idx FROM segments ORDER BY idx")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    SecurityGroupId::from_stored(r.try_get::<String, _>("group_id").map_err(db)?),
                    r.try_get::<i64, _>("idx").map_err(db)? as u32,
                ))
            })
            .collect()
    }

    async fn release_segment(&self, group: &SecurityGroupId) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query("DELETE FROM segments WHERE group_id = $1")
            .bind(group.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx).await
    }

    async fn put_tags(
        &self,
        account: &AccountId,
        resources: &[(String, ResourceType)],
        tags: &[(String, String)],
    ) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        for (id, t) in resources {
            if !resource_owned(&mut tx, account, id, *t).await? {
                return Err(not_found_for(id, *t));
            }
            for (k, v) in tags {
                sqlx::query("DELETE FROM tags WHERE resource_id = $1 AND tag_key = $2")
                    .bind(id)
                    .bind(k)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query(
                    "INSERT INTO tags (resource_id, account_id, resource_type, tag_key, tag_value) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(account.as_str())
                .bind(resource_type_str(*t))
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tags WHERE resource_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
            if n as usize > MAX_TAGS_PER_RESOURCE {
                return Err(Error::new(
                    ErrorKind::TagLimitExceeded,
                    format!(
                        "The maximum number of Tags for a resource has been reached ({MAX_TAGS_PER_RESOURCE}): {id}"
                    ),
                ));
            }
        }
        self.commit(tx).await
    }

    async fn delete_tags(
        &self,
        account: &AccountId,
        resources: &[(String, ResourceType)],
        tags: &[TagSelector],
    ) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        for (id, t) in resources {
            if !resource_owned(&mut tx, account, id, *t).await? {
                return Err(not_found_for(id, *t));
            }
            if tags.is_empty() {
                sqlx::query("DELETE FROM tags WHERE resource_id = $1 AND account_id = $2")
                    .bind(id)
                    .bind(account.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            for sel in tags {
                match &sel.value {
                    Some(v) => sqlx::query(
                        "DELETE FROM tags WHERE resource_id = $1 AND account_id = $2 AND tag_key = $3 AND tag_value = $4",
                    )
                    .bind(id)
                    .bind(account.as_str())
                    .bind(&sel.key)
                    .bind(v)
                    .execute(&mut *tx)
                    .await,
                    None => sqlx::query(
                        "DELETE FROM tags WHERE resource_id = $1 AND account_id = $2 AND tag_key = $3",
                    )
                    .bind(id)
                    .bind(account.as_str())
                    .bind(&sel.key)
                    .execute(&mut *tx)
                    .await,
                }
                .map_err(db)?;
            }
        }
        self.commit(tx).await
    }

    async fn list_tags(&self, account: Option<&AccountId>) -> Result<Vec<Tag>> {
        let rows = self
            .scoped_rows(
                "SELECT resource_id, resource_type, tag_key, tag_value FROM tags",
                "resource_id, tag_key",
                account,
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Tag {
                    resource_id: r.try_get("resource_id").map_err(db)?,
                    resource_type: resource_type_parse(
                        &r.try_get::<String, _>("resource_type").map_err(db)?,
                    )?,
                    key: r.try_get("tag_key").map_err(db)?,
                    value: r.try_get("tag_value").map_err(db)?,
                })
            })
            .collect()
    }

    async fn put_volume(&self, v: &Volume) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let a = v.attachment.as_ref();
        sqlx::query(
            "INSERT INTO volumes (id, account_id, size_gib, snapshot_id, zone, state, error, created_ms, attach_instance, attach_device, attach_state, attach_ms, force_detach) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, error = excluded.error, \
             attach_instance = excluded.attach_instance, attach_device = excluded.attach_device, \
             attach_state = excluded.attach_state, attach_ms = excluded.attach_ms, force_detach = excluded.force_detach",
        )
        .bind(v.id.as_str())
        .bind(v.account_id.as_str())
        .bind(i64::from(v.size_gib))
        .bind(v.snapshot_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
        .bind(&v.zone)
        .bind(v.state.as_str())
        .bind(v.error.as_deref().unwrap_or(""))
        .bind(v.created_ms)
        .bind(a.map(|a| a.instance_id.as_str()).unwrap_or(""))
        .bind(a.map(|a| a.device.as_str()).unwrap_or(""))
        .bind(a.map(|a| a.state.as_str()).unwrap_or(""))
        .bind(a.map(|a| a.attach_ms).unwrap_or(0))
        .bind(i64::from(a.is_some_and(|a| a.force_detach)))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.commit(tx).await
    }

    async fn list_volumes(&self, account: Option<&AccountId>) -> Result<Vec<Volume>> {
        let rows = self
            .scoped_rows(VOLUME_SELECT, "created_ms, id", account)
            .await?;
        rows.iter().map(volume_row).collect()
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<bool> {
        self.delete_with_tags("volumes", id.as_str()).await
    }

    async fn put_snapshot(&self, sn: &Snapshot) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        let shared: Vec<&str> = sn.shared_with.iter().map(|a| a.as_str()).collect();
        sqlx::query(
            "INSERT INTO snapshots (id, account_id, volume_id, volume_size_gib, description, state, progress, started_ms, location, compression, sha256, raw_digest, error, public, shared_with, upload_id, answered) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, progress = excluded.progress, \
             sha256 = excluded.sha256, raw_digest = excluded.raw_digest, error = excluded.error, \
             public = excluded.public, shared_with = excluded.shared_with, upload_id = excluded.upload_id, \
             answered = excluded.answered",
        )
        .bind(sn.id.as_str())
        .bind(sn.account_id.as_str())
        .bind(sn.volume_id.as_str())
        .bind(i64::from(sn.volume_size_gib))
        .bind(&sn.description)
        .bind(sn.state.as_str())
        .bind(i64::from(sn.progress))
        .bind(sn.started_ms)
        .bind(&sn.location)
        .bind(&sn.compression)
        .bind(sn.sha256.as_deref().unwrap_or(""))
        .bind(sn.raw_digest.as_deref().unwrap_or(""))
        .bind(sn.error.as_deref().unwrap_or(""))
        .bind(i64::from(sn.public))
        .bind(shared.join(","))
        .bind(sn.upload_id.as_deref().unwrap_or(""))
        .bind(i64::from(sn.answered))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.commit(tx).await
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SNAPSHOT_SELECT} ORDER BY started_ms, id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(snapshot_row).collect()
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool> {
        self.delete_with_tags("snapshots", id.as_str()).await
    }

    async fn insert_address(&self, a: &Address) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO addresses (public_ip, allocation_id, account_id, instance_id, association_id, restore_ip, allocated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&a.public_ip)
        .bind(a.allocation_id.as_str())
        .bind(a.account_id.as_str())
        .bind(a.instance_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
        .bind(a.association_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
        .bind(a.restore_ip.as_deref().unwrap_or(""))
        .bind(a.allocated_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::new(
                    ErrorKind::InsufficientAddressCapacity,
                    format!("Address {} is already allocated", a.public_ip),
                )
            } else {
                db(e)
            }
        })?;
        self.commit(tx).await
    }

    async fn list_addresses(&self, account: Option<&AccountId>) -> Result<Vec<Address>> {
        let rows = self
            .scoped_rows(ADDRESS_SELECT, "allocated_ms, public_ip", account)
            .await?;
        rows.iter().map(address_row).collect()
    }

    async fn write_addresses(&self, change: &AddressChange) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        for a in &change.update {
            let n = sqlx::query(
                "UPDATE addresses SET instance_id = $2, association_id = $3, restore_ip = $4 WHERE public_ip = $1",
            )
            .bind(&a.public_ip)
            .bind(a.instance_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
            .bind(a.association_id.as_ref().map(|x| x.as_str()).unwrap_or(""))
            .bind(a.restore_ip.as_deref().unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::AddressNotFound,
                    format!("Address '{}' not found.", a.public_ip),
                ));
            }
        }
        for ip in &change.delete {
            sqlx::query("DELETE FROM addresses WHERE public_ip = $1")
                .bind(ip)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for (id, ip) in &change.instance_ips {
            sqlx::query("UPDATE instances SET public_ip = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(ip.as_deref().unwrap_or(""))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        self.commit(tx).await
    }

    async fn property(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM properties WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn set_property(&self, name: &str, value: &str) -> Result<()> {
        let (_g, mut tx) = self.begin().await?;
        sqlx::query("DELETE FROM properties WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO properties (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx).await
    }

    async fn list_properties(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, value FROM properties ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name").map_err(db)?,
                    r.try_get("value").map_err(db)?,
                ))
            })
            .collect()
    }
}

async fn insert_rule(
    tx: &mut Transaction<'_, Sqlite>,
    group: &SecurityGroupId,
    rule: &Rule,
) -> Result<()> {
    let (cidr, src) = rule_key(rule);
    sqlx::query(
        "INSERT INTO security_group_rules (group_id, protocol, from_port, to_port, cidr, source_group_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(group.as_str())
    .bind(rule.protocol.as_str())
    .bind(i64::from(rule.from_port))
    .bind(i64::from(rule.to_port))
    .bind(cidr)
    .bind(src)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::new(
                ErrorKind::PermissionDuplicate,
                format!("the specified rule \"{}\" already exists", rule.describe()),
            )
        } else {
            db(e)
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_in_memory_passes_conformance() {
        let s = SqliteStore::in_memory().await.unwrap();
        crate::conformance::run_all(&s).await;
    }

    #[tokio::test]
    async fn sqlite_file_survives_reopen_and_migrates_once() {
        let dir = std::env::temp_dir().join(format!("ironbark-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let s = SqliteStore::open(&path).await.unwrap();
            s.set_property("cloud.test", "1").await.unwrap();
            s.pool.close().await;
        }
        let s = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            s.property("cloud.test").await.unwrap().as_deref(),
            Some("1")
        );
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(n as usize, MIGRATIONS.len());
        // Another handle on the file (another process, as the admin tool
        // is) committing changes what this one reports as its version.
        let other = SqliteStore::open(&path).await.unwrap();
        let v = s.version();
        other.set_property("cloud.test", "2").await.unwrap();
        assert_ne!(s.version(), v);
        other.pool.close().await;
        s.pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
