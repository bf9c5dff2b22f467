//! Runs Walrus inside this process: its identities come from the CLC's
//! accounts and keys, and it answers on its own port at the root path, where
//! S3 tools that take only a host and port can reach it.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use std::sync::{OnceLock, Weak};

use ironbark_clc::{Cloud, ObjectSource};
use ironbark_types::{ADMIN_ACCOUNT, AccountId, Error, ErrorKind, Result, now_ms};
use ironbark_walrus::{Identities, Identity, Walrus};

pub struct CloudIdentities(pub Arc<Cloud>);

#[async_trait::async_trait]
impl Identities for CloudIdentities {
    async fn lookup(&self, access_key: &str) -> Option<Identity> {
        match self.0.key_owner(access_key).await {
            Ok(Some((secret, account))) => Some(Identity {
                secret,
                account_id: account.id.to_string(),
                account_name: account.name,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "walrus: looking up an access key");
                None
            }
        }
    }

    async fn account_name(&self, account_id: &str) -> Option<String> {
        let id = AccountId::parse(account_id).ok()?;
        self.0
            .store()
            .account_by_id(&id)
            .await
            .ok()
            .flatten()
            .map(|a| a.name)
    }

    async fn is_superuser(&self, account_id: &str) -> bool {
        self.account_name(account_id).await.as_deref() == Some(ADMIN_ACCOUNT)
    }
}

/// The CLC's view of Walrus for images and snapshots: digests read as the
/// registering account, presigned URLs (signed with the administrator's
/// key) that NCs fetch images from and the SC restores snapshots from, and
/// snapshots' multipart uploads, which the CLC creates and aborts here and
/// the SC fills through presigned part URLs (so it holds no secret). Both halves exist only once the process has
/// built the cloud and Walrus, which need each other, hence the cells.
#[derive(Default)]
pub struct WalrusObjects {
    walrus: OnceLock<Walrus>,
    cloud: OnceLock<Weak<Cloud>>,
    base_url: String,
    region: String,
}

impl WalrusObjects {
    pub fn new(base_url: &str, region: &str) -> Self {
        WalrusObjects {
            base_url: base_url.trim_end_matches('/').to_string(),
            region: region.to_string(),
            ..Default::default()
        }
    }

    pub fn attach(&self, walrus: Walrus, cloud: &Arc<Cloud>) {
        let _ = self.walrus.set(walrus);
        let _ = self.cloud.set(Arc::downgrade(cloud));
    }
}

#[async_trait::async_trait]
impl ObjectSource for WalrusObjects {
    async fn digest(&self, account: &AccountId, bucket: &str, key: &str) -> Result<(u64, String)> {
        let w = self
            .walrus
            .get()
            .ok_or_else(|| Error::internal("Walrus is not running"))?;
        w.object_digest(account.as_str(), bucket, key)
            .await
            .map_err(|m| Error::new(ErrorKind::ImageManifestNotFound, m))
    }

    async fn presign_get(&self, bucket: &str, key: &str, secs: u32) -> Result<String> {
        let (id, secret) = self.cloud()?.system_credentials().await?;
        Ok(self.presign(
            &(id.as_str(), secret.as_str()),
            "GET",
            bucket,
            key,
            "",
            secs,
        ))
    }

    async fn create_upload(&self, bucket: &str, key: &str) -> Result<String> {
        let admin = self.cloud()?.account_named(ADMIN_ACCOUNT).await?;
        self.walrus()?
            .create_system_upload(admin.id.as_str(), &admin.name, bucket, key)
            .await
            .map_err(Error::internal)
    }

    async fn presign_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: u32,
        secs: u32,
    ) -> Result<(Vec<String>, String)> {
        let (id, secret) = self.cloud()?.system_credentials().await?;
        let creds = (id.as_str(), secret.as_str());
        let upload = ironbark_sigv4::uri_encode(upload_id.as_bytes());
        let part_urls = (1..=parts)
            .map(|n| {
                let q = format!("partNumber={n}&uploadId={upload}");
                self.presign(&creds, "PUT", bucket, key, &q, secs)
            })
            .collect();
        let complete = self.presign(
            &creds,
            "POST",
            bucket,
            key,
            &format!("uploadId={upload}"),
            secs,
        );
        Ok((part_urls, complete))
    }

    async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.walrus()?
            .abort_system_upload(bucket, key, upload_id)
            .await
            .map_err(Error::internal)
    }

    async fn ensure_system_bucket(&self, bucket: &str) -> Result<()> {
        let w = self.walrus()?;
        let admin = self.cloud()?.account_named(ADMIN_ACCOUNT).await?;
        w.ensure_bucket(admin.id.as_str(), &admin.name, bucket)
            .await
            .map_err(Error::internal)
    }

    async fn remove(&self, bucket: &str, key: &str) -> Result<()> {
        self.walrus()?
            .remove_object(bucket, key)
            .await
            .map_err(Error::internal)
    }

    async fn system_head(&self, bucket: &str, key: &str) -> Result<Option<(u64, String)>> {
        self.walrus()?
            .system_head(bucket, key)
            .await
            .map_err(Error::internal)
    }

    async fn system_listing(&self, bucket: &str) -> Result<ironbark_clc::SystemListing> {
        let (keys, uploads) = self
            .walrus()?
            .system_listing(bucket)
            .await
            .map_err(Error::internal)?;
        Ok(ironbark_clc::SystemListing { keys, uploads })
    }
}

impl WalrusObjects {
    fn walrus(&self) -> Result<&Walrus> {
        self.walrus
            .get()
            .ok_or_else(|| Error::internal("Walrus is not running"))
    }

    fn cloud(&self) -> Result<Arc<Cloud>> {
        self.cloud
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Error::internal("the cloud is shutting down"))
    }

    /// A presigned SigV4 URL made with the administrator's key
    /// (`creds`: access key id and secret), which may read every object and
    /// write the cloud's own buckets. `query` (encoded) is signed with it.
    fn presign(
        &self,
        (id, secret): &(&str, &str),
        method: &str,
        bucket: &str,
        key: &str,
        query: &str,
        secs: u32,
    ) -> String {
        let host = self
            .base_url
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or(&self.base_url)
            .trim_end_matches('/')
            .to_string();
        let path = format!(
            "/{}/{}",
            ironbark_sigv4::uri_encode(bucket.as_bytes()),
            key.split('/')
                .map(|seg| ironbark_sigv4::uri_encode(seg.as_bytes()))
                .collect::<Vec<_>>()
                .join("/")
        );
        let query = ironbark_sigv4::presign_v4(
            method,
            &path,
            query,
            &[("host".to_string(), host)],
            id,
            secret,
            &self.region,
            "s3",
            now_ms() / 1000,
            secs,
        );
        format!("{}{path}?{query}", self.base_url)
    }
}

/// Accepts connections and serves S3 on each until the process ends.
/// Serves S3 on Walrus' own port. Each request first passes
/// [`Walrus::fix_sigv2_bucket_path`], which lets bucket-level SigV2 requests
/// signed over `/bucket/` reach `s3s` in the form it verifies.
pub async fn serve(
    walrus: Walrus,
    service: s3s::service::S3Service,
    listener: tokio::net::TcpListener,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "Walrus (S3) listening");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "walrus accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (svc, walrus) = (service.clone(), walrus.clone());
        let front = hyper::service::service_fn(move |mut req| {
            let (svc, walrus) = (svc.clone(), walrus.clone());
            async move {
                walrus.fix_sigv2_bucket_path(&mut req).await;
                hyper::service::Service::call(&svc, req).await
            }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), front);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "walrus connection ended");
            }
        });
    }
}
