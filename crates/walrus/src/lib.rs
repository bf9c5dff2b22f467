//! Walrus, the S3-compatible object store: the buckets and objects that
//! hold machine images, bundles and volume snapshots.
//!
//! A request reaches the [`s3s`] service built by [`Walrus::service`],
//! which parses the S3 wire protocol (path- or virtual-host-style, SigV4
//! including streaming uploads and presigned URLs, SigV2) and verifies the
//! signature with the secret [`Identities`] hands it (the CLC's accounts and
//! keys). The decoded operation lands in `s3.rs`, which checks ACLs and
//! works on two stores: [`meta::Meta`], the SQLite index of buckets,
//! objects and uploads, and [`blob::FsBlobs`], the checksummed object data
//! on the local filesystem. The blob layer is the seam where an external S3
//! backend can later replace the local disk.

pub mod acl;
pub mod blob;
pub mod meta;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use s3s::auth::{S3Auth, SecretKey};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Result, s3_error};

pub use s3::Walrus;

/// An access key's secret and owner, as Walrus needs them.
#[derive(Clone, Debug)]
pub struct Identity {
    pub secret: String,
    pub account_id: String,
    pub account_name: String,
}

/// Where Walrus learns who holds which key: the CLC's account store.
#[async_trait::async_trait]
pub trait Identities: Send + Sync + 'static {
    async fn lookup(&self, access_key: &str) -> Option<Identity>;
    /// The name of an account, for ACL grants by canonical id.
    async fn account_name(&self, account_id: &str) -> Option<String>;
    /// Whether the account may read and write every bucket (the cloud's
    /// administrator).
    async fn is_superuser(&self, _account_id: &str) -> bool {
        false
    }
}

#[derive(Clone, Debug)]
pub struct WalrusConfig {
    pub data_dir: PathBuf,
    pub region: String,
    /// LocationConstraint values CreateBucket accepts (none is always fine).
    pub locations: Vec<String>,
    /// Base domains for virtual-host-style requests (`bucket.<domain>`).
    pub domains: Vec<String>,
}

struct Auth(Arc<dyn Identities>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.lookup(access_key).await {
            Some(i) => Ok(SecretKey::from(i.secret)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Anonymous requests must reach the operations, which allow them exactly
/// where an ACL grants AllUsers; the default policy would refuse them all.
struct AclDecides;

#[async_trait::async_trait]
impl s3s::access::S3Access for AclDecides {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        Ok(())
    }
}

impl Walrus {
    /// Opens Walrus' state for a tool running beside a live Walrus (the
    /// admin CLI): no garbage collection, since the server may be midway
    /// through writing a blob that no metadata names yet.
    pub async fn open_shared(
        config: WalrusConfig,
        ids: Arc<dyn Identities>,
    ) -> Result<Self, String> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let meta = meta::Meta::open(&dir.join("meta.db"))
            .await
            .map_err(|e| e.to_string())?;
        let blobs = blob::FsBlobs::open(dir.join("data")).map_err(|e| e.to_string())?;
        Ok(Walrus {
            meta: Arc::new(meta),
            blobs,
            ids,
            config,
        })
    }

    /// Opens Walrus' state and removes blobs no object or part refers to
    /// (what a crash mid-upload leaves), before anything is served.
    pub async fn open(config: WalrusConfig, ids: Arc<dyn Identities>) -> Result<Self, String> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let meta = meta::Meta::open(&dir.join("meta.db"))
            .await
            .map_err(|e| e.to_string())?;
        let blobs = blob::FsBlobs::open(dir.join("data")).map_err(|e| e.to_string())?;
        let live = meta.live_blobs().await.map_err(|e| e.to_string())?;
        let removed = blobs.collect_garbage(&live).map_err(|e| e.to_string())?;
        if removed > 0 {
            tracing::info!(
                removed,
                "walrus removed unreferenced data left by an interrupted write"
            );
        }
        Ok(Walrus {
            meta: Arc::new(meta),
            blobs,
            ids,
            config,
        })
    }

    /// The HTTP service answering S3 requests.
    pub fn service(self) -> Result<S3Service, String> {
        let ids = self.ids.clone();
        let domains = self.config.domains.clone();
        let mut b = S3ServiceBuilder::new(self);
        b.set_auth(Auth(ids));
        b.set_access(AclDecides);
        if !domains.is_empty() {
            let host = s3s::host::MultiDomain::new(&domains).map_err(|e| e.to_string())?;
            b.set_host(host);
        }
        Ok(b.build())
    }
}
