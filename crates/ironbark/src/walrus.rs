//! Runs Walrus inside this process: its identities come from the CLC's
//! accounts and keys, and it answers on its own port at the root path, where
//! S3 tools that take only a host and port can reach it.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use ironbark_clc::Cloud;
use ironbark_types::AccountId;
use ironbark_walrus::{Identities, Identity};

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
}

/// Accepts connections and serves S3 on each until the process ends.
pub async fn serve(service: s3s::service::S3Service, listener: tokio::net::TcpListener) {
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
        let svc = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "walrus connection ended");
            }
        });
    }
}
