//! Walrus' metadata: which buckets exist, which objects they hold and which
//! blobs make each object, and the multipart uploads in progress. One SQLite
//! file, in WAL mode with full fsync; each change is one transaction.
//!
//! An object becomes visible exactly when the transaction inserting its row
//! commits, after its blobs are durable. Calls that replace or remove
//! objects return the blob ids that stopped being referenced, for the caller
//! to delete after the commit (a crash in between leaves only garbage that
//! the start-up collection removes).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::Mutex;

use crate::acl::Acl;

#[derive(Debug)]
pub enum MetaError {
    BucketExists { owned_by_you: bool },
    NoSuchBucket,
    BucketNotEmpty,
    NoSuchUpload,
    Db(String),
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

fn db(e: impl std::fmt::Display) -> MetaError {
    MetaError::Db(e.to_string())
}

pub type MetaResult<T> = Result<T, MetaError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub owner_id: String,
    pub created_ms: i64,
    pub location: String,
    pub acl: Acl,
}

/// One piece of an object's data, in order. Single PUTs have one; objects
/// made by multipart upload keep their parts' blobs, so completing an
/// upload moves no data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub blob: String,
    pub size: u64,
}

/// The HTTP headers S3 stores with an object and returns on GET/HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHeaders {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    pub expires: Option<String>,
    pub user_meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes: hex MD5, or `hex-N` for multipart.
    pub etag: String,
    pub headers: StoredHeaders,
    pub pieces: Vec<Piece>,
    pub modified_ms: i64,
    pub acl: Acl,
    /// The flexible checksum of the whole object, when the client sent or
    /// asked for one.
    pub checksum: Option<StoredChecksum>,
}

/// A flexible checksum (`x-amz-checksum-*`) kept with an object or a part,
/// returned on GET/HEAD with `x-amz-checksum-mode: ENABLED`; on an upload,
/// the algorithm and type CreateMultipartUpload declared (empty value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChecksum {
    /// `CRC32`, `CRC32C`, `CRC64NVME`, `SHA1` or `SHA256`.
    pub algorithm: String,
    /// `FULL_OBJECT`, or `COMPOSITE` for a checksum of the parts' checksums.
    pub kind: String,
    /// Base64 of the digest; `<base64>-<parts>` when composite.
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated_ms: i64,
    pub headers: StoredHeaders,
    pub acl: Acl,
    /// The checksum algorithm (and type) the parts are to carry.
    pub checksum: Option<StoredChecksum>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub number: i32,
    pub size: u64,
    pub etag: String,
    pub blob: String,
    pub modified_ms: i64,
    pub checksum: Option<StoredChecksum>,
}

pub struct Meta {
    pool: SqlitePool,
    write: Mutex<()>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    location TEXT NOT NULL,
    acl TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size BIGINT NOT NULL,
    etag TEXT NOT NULL,
    headers TEXT NOT NULL,
    pieces TEXT NOT NULL,
    modified_ms BIGINT NOT NULL,
    acl TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    initiated_ms BIGINT NOT NULL,
    headers TEXT NOT NULL,
    acl TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_bucket ON uploads (bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    size BIGINT NOT NULL,
    etag TEXT NOT NULL,
    blob TEXT NOT NULL,
    modified_ms BIGINT NOT NULL,
    PRIMARY KEY (upload_id, number)
);
"#;

/// Columns added after the tables were first created: `CREATE TABLE IF NOT
/// EXISTS` leaves an existing database's tables as they were, so
/// [`Meta::open`] adds these where missing. Each holds a
/// [`StoredChecksum`] as JSON, or NULL.
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    (
        "objects",
        "checksum",
        "ALTER TABLE objects ADD COLUMN checksum TEXT",
    ),
    (
        "uploads",
        "checksum",
        "ALTER TABLE uploads ADD COLUMN checksum TEXT",
    ),
    (
        "parts",
        "checksum",
        "ALTER TABLE parts ADD COLUMN checksum TEXT",
    ),
];

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("metadata serialises")
}

fn unjson<T: for<'a> Deserialize<'a>>(s: &str) -> MetaResult<T> {
    serde_json::from_str(s).map_err(db)
}

fn checksum_col(r: &SqliteRow) -> MetaResult<Option<StoredChecksum>> {
    r.try_get::<Option<String>, _>("checksum")
        .map_err(db)?
        .map(|s| unjson(&s))
        .transpose()
}

fn bucket_row(r: &SqliteRow) -> MetaResult<Bucket> {
    Ok(Bucket {
        name: r.try_get("name").map_err(db)?,
        owner_id: r.try_get("owner_id").map_err(db)?,
        created_ms: r.try_get("created_ms").map_err(db)?,
        location: r.try_get("location").map_err(db)?,
        acl: unjson(&r.try_get::<String, _>("acl").map_err(db)?)?,
    })
}

fn object_row(r: &SqliteRow) -> MetaResult<Object> {
    Ok(Object {
        bucket: r.try_get("bucket").map_err(db)?,
        key: r.try_get("key").map_err(db)?,
        size: r.try_get::<i64, _>("size").map_err(db)? as u64,
        etag: r.try_get("etag").map_err(db)?,
        headers: unjson(&r.try_get::<String, _>("headers").map_err(db)?)?,
        pieces: unjson(&r.try_get::<String, _>("pieces").map_err(db)?)?,
        modified_ms: r.try_get("modified_ms").map_err(db)?,
        acl: unjson(&r.try_get::<String, _>("acl").map_err(db)?)?,
        checksum: checksum_col(r)?,
    })
}

fn upload_row(r: &SqliteRow) -> MetaResult<Upload> {
    Ok(Upload {
        upload_id: r.try_get("upload_id").map_err(db)?,
        bucket: r.try_get("bucket").map_err(db)?,
        key: r.try_get("key").map_err(db)?,
        initiated_ms: r.try_get("initiated_ms").map_err(db)?,
        headers: unjson(&r.try_get::<String, _>("headers").map_err(db)?)?,
        acl: unjson(&r.try_get::<String, _>("acl").map_err(db)?)?,
        checksum: checksum_col(r)?,
    })
}

fn part_row(r: &SqliteRow) -> MetaResult<Part> {
    Ok(Part {
        number: r.try_get::<i64, _>("number").map_err(db)? as i32,
        size: r.try_get::<i64, _>("size").map_err(db)? as u64,
        etag: r.try_get("etag").map_err(db)?,
        blob: r.try_get("blob").map_err(db)?,
        modified_ms: r.try_get("modified_ms").map_err(db)?,
        checksum: checksum_col(r)?,
    })
}

async fn take_object(
    tx: &mut Transaction<'_, Sqlite>,
    bucket: &str,
    key: &str,
) -> MetaResult<Option<Object>> {
    let row = sqlx::query("SELECT bucket, key, size, etag, headers, pieces, modified_ms, acl, checksum FROM objects WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let old = row.as_ref().map(object_row).transpose()?;
    if old.is_some() {
        sqlx::query("DELETE FROM objects WHERE bucket = $1 AND key = $2")
            .bind(bucket)
            .bind(key)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(old)
}

async fn insert_object(tx: &mut Transaction<'_, Sqlite>, o: &Object) -> MetaResult<()> {
    sqlx::query("INSERT INTO objects (bucket, key, size, etag, headers, pieces, modified_ms, acl, checksum) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&o.bucket)
        .bind(&o.key)
        .bind(o.size as i64)
        .bind(&o.etag)
        .bind(json(&o.headers))
        .bind(json(&o.pieces))
        .bind(o.modified_ms)
        .bind(json(&o.acl))
        .bind(o.checksum.as_ref().map(json))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

async fn bucket_exists(tx: &mut Transaction<'_, Sqlite>, name: &str) -> MetaResult<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM buckets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n > 0)
}

fn blobs_of(o: Option<Object>) -> Vec<String> {
    o.map(|o| o.pieces.into_iter().map(|p| p.blob).collect())
        .unwrap_or_default()
}

impl Meta {
    pub async fn open(path: &Path) -> MetaResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(db)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(db)?;
        for (table, column, add) in ADDED_COLUMNS {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2")
                    .bind(table)
                    .bind(column)
                    .fetch_one(&pool)
                    .await
                    .map_err(db)?;
            if n == 0 {
                sqlx::raw_sql(add).execute(&pool).await.map_err(db)?;
            }
        }
        Ok(Meta {
            pool,
            write: Mutex::new(()),
        })
    }

    async fn begin(
        &self,
    ) -> MetaResult<(tokio::sync::MutexGuard<'_, ()>, Transaction<'_, Sqlite>)> {
        let g = self.write.lock().await;
        let tx = self.pool.begin().await.map_err(db)?;
        Ok((g, tx))
    }

    pub async fn create_bucket(&self, b: &Bucket) -> MetaResult<()> {
        let (_g, mut tx) = self.begin().await?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner_id FROM buckets WHERE name = $1")
                .bind(&b.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if let Some(o) = owner {
            return Err(MetaError::BucketExists {
                owned_by_you: o == b.owner_id,
            });
        }
        sqlx::query("INSERT INTO buckets (name, owner_id, created_ms, location, acl) VALUES ($1, $2, $3, $4, $5)")
            .bind(&b.name)
            .bind(&b.owner_id)
            .bind(b.created_ms)
            .bind(&b.location)
            .bind(json(&b.acl))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub async fn bucket(&self, name: &str) -> MetaResult<Bucket> {
        let row = sqlx::query(
            "SELECT name, owner_id, created_ms, location, acl FROM buckets WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(bucket_row)
            .transpose()?
            .ok_or(MetaError::NoSuchBucket)
    }

    pub async fn buckets_of(&self, owner: &str) -> MetaResult<Vec<Bucket>> {
        let rows = sqlx::query("SELECT name, owner_id, created_ms, location, acl FROM buckets WHERE owner_id = $1 ORDER BY name")
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(bucket_row).collect()
    }

    pub async fn delete_bucket(&self, name: &str) -> MetaResult<()> {
        let (_g, mut tx) = self.begin().await?;
        if !bucket_exists(&mut tx, name).await? {
            return Err(MetaError::NoSuchBucket);
        }
        let n: i64 = sqlx::query_scalar("SELECT (SELECT COUNT(*) FROM objects WHERE bucket = $1) + (SELECT COUNT(*) FROM uploads WHERE bucket = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if n > 0 {
            return Err(MetaError::BucketNotEmpty);
        }
        sqlx::query("DELETE FROM buckets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub async fn set_bucket_acl(&self, name: &str, acl: &Acl) -> MetaResult<()> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("UPDATE buckets SET acl = $2 WHERE name = $1")
            .bind(name)
            .bind(json(acl))
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(MetaError::NoSuchBucket);
        }
        tx.commit().await.map_err(db)
    }

    /// Makes `o` the object at its key; returns blobs no longer referenced.
    pub async fn put_object(&self, o: &Object) -> MetaResult<Vec<String>> {
        let (_g, mut tx) = self.begin().await?;
        if !bucket_exists(&mut tx, &o.bucket).await? {
            return Err(MetaError::NoSuchBucket);
        }
        let old = take_object(&mut tx, &o.bucket, &o.key).await?;
        insert_object(&mut tx, o).await?;
        tx.commit().await.map_err(db)?;
        Ok(blobs_of(old))
    }

    pub async fn object(&self, bucket: &str, key: &str) -> MetaResult<Option<Object>> {
        let row = sqlx::query("SELECT bucket, key, size, etag, headers, pieces, modified_ms, acl, checksum FROM objects WHERE bucket = $1 AND key = $2")
            .bind(bucket)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(object_row).transpose()
    }

    /// Returns the removed object's blobs (none if there was no object).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> MetaResult<Vec<String>> {
        let (_g, mut tx) = self.begin().await?;
        let old = take_object(&mut tx, bucket, key).await?;
        tx.commit().await.map_err(db)?;
        Ok(blobs_of(old))
    }

    pub async fn set_object_acl(&self, bucket: &str, key: &str, acl: &Acl) -> MetaResult<bool> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("UPDATE objects SET acl = $3 WHERE bucket = $1 AND key = $2")
            .bind(bucket)
            .bind(key)
            .bind(json(acl))
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    /// Objects whose keys start with `prefix` and sort after `after`, in
    /// byte order, at most `limit`.
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> MetaResult<Vec<Object>> {
        // A range scan on the primary key; the prefix bound is checked in
        // Rust so LIKE's wildcards and case rules never apply.
        let rows = sqlx::query(
            "SELECT bucket, key, size, etag, headers, pieces, modified_ms, acl, checksum FROM objects \
             WHERE bucket = $1 AND key > $2 AND key >= $3 ORDER BY key LIMIT $4",
        )
        .bind(bucket)
        .bind(after)
        .bind(prefix)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let o = object_row(r)?;
            if !o.key.starts_with(prefix) {
                break;
            }
            out.push(o);
        }
        Ok(out)
    }

    pub async fn create_upload(&self, u: &Upload) -> MetaResult<()> {
        let (_g, mut tx) = self.begin().await?;
        if !bucket_exists(&mut tx, &u.bucket).await? {
            return Err(MetaError::NoSuchBucket);
        }
        sqlx::query("INSERT INTO uploads (upload_id, bucket, key, initiated_ms, headers, acl, checksum) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&u.upload_id)
            .bind(&u.bucket)
            .bind(&u.key)
            .bind(u.initiated_ms)
            .bind(json(&u.headers))
            .bind(json(&u.acl))
            .bind(u.checksum.as_ref().map(json))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> MetaResult<Upload> {
        let row = sqlx::query("SELECT upload_id, bucket, key, initiated_ms, headers, acl, checksum FROM uploads WHERE upload_id = $1 AND bucket = $2 AND key = $3")
            .bind(upload_id)
            .bind(bucket)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref()
            .map(upload_row)
            .transpose()?
            .ok_or(MetaError::NoSuchUpload)
    }

    /// Uploads of a bucket in (key, upload id) order after the markers.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        key_marker: &str,
        id_marker: &str,
        limit: usize,
    ) -> MetaResult<Vec<Upload>> {
        let rows = sqlx::query(
            "SELECT upload_id, bucket, key, initiated_ms, headers, acl, checksum FROM uploads \
             WHERE bucket = $1 AND key >= $2 AND (key > $3 OR (key = $3 AND upload_id > $4)) \
             ORDER BY key, upload_id LIMIT $5",
        )
        .bind(bucket)
        .bind(prefix)
        .bind(key_marker)
        .bind(id_marker)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = Vec::new();
        for r in &rows {
            let u = upload_row(r)?;
            if !u.key.starts_with(prefix) {
                break;
            }
            out.push(u);
        }
        Ok(out)
    }

    /// Records a part; returns the blob of the part it replaced, if any.
    pub async fn put_part(&self, upload_id: &str, p: &Part) -> MetaResult<Option<String>> {
        let (_g, mut tx) = self.begin().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(MetaError::NoSuchUpload);
        }
        let old: Option<String> =
            sqlx::query_scalar("SELECT blob FROM parts WHERE upload_id = $1 AND number = $2")
                .bind(upload_id)
                .bind(i64::from(p.number))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        sqlx::query("DELETE FROM parts WHERE upload_id = $1 AND number = $2")
            .bind(upload_id)
            .bind(i64::from(p.number))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO parts (upload_id, number, size, etag, blob, modified_ms, checksum) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(upload_id)
            .bind(i64::from(p.number))
            .bind(p.size as i64)
            .bind(&p.etag)
            .bind(&p.blob)
            .bind(p.modified_ms)
            .bind(p.checksum.as_ref().map(json))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(old)
    }

    pub async fn parts(&self, upload_id: &str) -> MetaResult<Vec<Part>> {
        let rows = sqlx::query("SELECT number, size, etag, blob, modified_ms, checksum FROM parts WHERE upload_id = $1 ORDER BY number")
            .bind(upload_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(part_row).collect()
    }

    /// Ends an upload: the object replaces whatever was at its key, the
    /// upload and its parts go. Returns blobs no longer referenced (the
    /// replaced object's and those of parts the object did not use).
    pub async fn complete_upload(&self, upload_id: &str, o: &Object) -> MetaResult<Vec<String>> {
        let (_g, mut tx) = self.begin().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(MetaError::NoSuchUpload);
        }
        let all: Vec<String> = sqlx::query_scalar("SELECT blob FROM parts WHERE upload_id = $1")
            .bind(upload_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let used: HashSet<&str> = o.pieces.iter().map(|p| p.blob.as_str()).collect();
        let mut dead: Vec<String> = all
            .into_iter()
            .filter(|b| !used.contains(b.as_str()))
            .collect();
        dead.extend(blobs_of(take_object(&mut tx, &o.bucket, &o.key).await?));
        insert_object(&mut tx, o).await?;
        sqlx::query("DELETE FROM parts WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(dead)
    }

    /// Drops an upload; returns its parts' blobs.
    pub async fn abort_upload(&self, upload_id: &str) -> MetaResult<Vec<String>> {
        let (_g, mut tx) = self.begin().await?;
        let n = sqlx::query("DELETE FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 0 {
            return Err(MetaError::NoSuchUpload);
        }
        let blobs: Vec<String> = sqlx::query_scalar("SELECT blob FROM parts WHERE upload_id = $1")
            .bind(upload_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM parts WHERE upload_id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(blobs)
    }

    /// Every blob any object or part refers to, for garbage collection.
    pub async fn live_blobs(&self) -> MetaResult<HashSet<String>> {
        let mut live = HashSet::new();
        let pieces: Vec<String> = sqlx::query_scalar("SELECT pieces FROM objects")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        for p in pieces {
            for piece in unjson::<Vec<Piece>>(&p)? {
                live.insert(piece.blob);
            }
        }
        let parts: Vec<String> = sqlx::query_scalar("SELECT blob FROM parts")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        live.extend(parts);
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(value: &str) -> StoredChecksum {
        StoredChecksum {
            algorithm: "CRC32".into(),
            kind: "FULL_OBJECT".into(),
            value: value.into(),
        }
    }

    /// A database made before the checksum columns existed gains them on
    /// open; its rows read as having no checksum, new rows keep theirs.
    #[tokio::test]
    async fn checksum_columns_are_added_to_an_older_database() {
        let dir = std::env::temp_dir().join(format!("walrus-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        {
            let pool = SqlitePoolOptions::new()
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
            sqlx::raw_sql(
                "INSERT INTO buckets VALUES ('b', 'o', 0, '', '{\"owner_id\":\"o\",\"owner_name\":\"n\",\"grants\":[]}');
                 INSERT INTO objects VALUES ('b', 'old', 1, 'e', '{\"user_meta\":{}}', '[]', 0, '{\"owner_id\":\"o\",\"owner_name\":\"n\",\"grants\":[]}');",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let m = Meta::open(&path).await.unwrap();
        let old = m.object("b", "old").await.unwrap().unwrap();
        assert_eq!(old.checksum, None);
        let mut new = old.clone();
        new.key = "new".into();
        new.checksum = Some(sum("y/Q5Jg=="));
        m.put_object(&new).await.unwrap();
        let u = Upload {
            upload_id: "u1".into(),
            bucket: "b".into(),
            key: "mp".into(),
            initiated_ms: 0,
            headers: StoredHeaders::default(),
            acl: old.acl.clone(),
            checksum: Some(sum("")),
        };
        m.create_upload(&u).await.unwrap();
        let p = Part {
            number: 1,
            size: 1,
            etag: "e".into(),
            blob: "x".into(),
            modified_ms: 0,
            checksum: Some(sum("AAAAAA==")),
        };
        m.put_part("u1", &p).await.unwrap();
        drop(m);
        // Opening again finds the columns there and changes nothing.
        let m = Meta::open(&path).await.unwrap();
        assert_eq!(m.object("b", "new").await.unwrap().unwrap(), new);
        assert_eq!(m.upload("b", "mp", "u1").await.unwrap(), u);
        assert_eq!(m.parts("u1").await.unwrap(), vec![p]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
