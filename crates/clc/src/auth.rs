//! Who signed this request? The claimed access key is looked up, its secret
//! unsealed, and the signature checked by `ironbark-sigv4`. Failures map to
//! the codes EC2 uses: an unknown or disabled key is `AuthFailure`, a bad
//! signature `SignatureDoesNotMatch`, a stale timestamp `RequestExpired`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ironbark_sigv4::{AuthError, HttpRequest};
use ironbark_types::*;

use crate::{Caller, Cloud};

/// An access key as authentication needs it, unsealed.
#[derive(Clone)]
pub(crate) struct CachedKey {
    id: AccessKeyId,
    secret: String,
    account: Account,
    user_name: String,
}

/// Keys looked up since the store last changed. Any commit anywhere (this
/// process or the admin tool) changes the store's version and empties the
/// cache, so a deleted key stops working at once; the age limit is a
/// backstop, not the mechanism.
#[derive(Default)]
pub(crate) struct AuthCache {
    version: u64,
    filled: Option<Instant>,
    keys: HashMap<String, Option<CachedKey>>,
}

const CACHE_MAX_AGE: Duration = Duration::from_secs(5);

fn auth_error(e: AuthError) -> Error {
    match e {
        AuthError::Missing => Error::new(
            ErrorKind::MissingAuthenticationToken,
            "Request is missing Authentication Token",
        ),
        AuthError::Incomplete(m) => Error::new(ErrorKind::IncompleteSignature, m),
        AuthError::Expired(m) => Error::new(
            ErrorKind::RequestExpired,
            format!("Request has expired: {m}"),
        ),
        AuthError::SignatureMismatch => Error::new(
            ErrorKind::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        ),
        AuthError::UnsupportedAlgorithm(m) => Error::new(ErrorKind::AuthFailure, m),
    }
}

fn unknown_key() -> Error {
    Error::new(
        ErrorKind::AuthFailure,
        "AWS was not able to validate the provided access credentials",
    )
}

impl Cloud {
    /// An active key, from the cache or the store (negative answers are
    /// cached too, so unknown keys cost no query either).
    async fn cached_key(&self, access_key: &str) -> Result<Option<CachedKey>> {
        let version = self.store.version();
        {
            let mut c = self.auth_cache.lock().expect("auth cache lock");
            if c.version != version || c.filled.is_none_or(|t| t.elapsed() > CACHE_MAX_AGE) {
                c.keys.clear();
                c.version = version;
                c.filled = Some(Instant::now());
            }
            if let Some(hit) = c.keys.get(access_key) {
                return Ok(hit.clone());
            }
        }
        let found = self.load_key(access_key).await?;
        let mut c = self.auth_cache.lock().expect("auth cache lock");
        if c.version == version && c.keys.len() < 100_000 {
            c.keys.insert(access_key.to_string(), found.clone());
        }
        Ok(found)
    }

    async fn load_key(&self, access_key: &str) -> Result<Option<CachedKey>> {
        let Ok(id) = AccessKeyId::parse(access_key) else {
            return Ok(None);
        };
        let Some(key) = self.store.access_key(&id).await? else {
            return Ok(None);
        };
        if !key.active {
            return Ok(None);
        }
        let secret = self.open_secret(&key)?;
        Ok(self
            .store
            .account_by_id(&key.account_id)
            .await?
            .map(|account| CachedKey {
                id: key.id,
                secret,
                account,
                user_name: key.user_name,
            }))
    }

    /// An active access key's secret and owning account, for services (Walrus)
    /// that verify signatures with their own protocol library.
    pub async fn key_owner(&self, access_key: &str) -> Result<Option<(String, Account)>> {
        Ok(self
            .cached_key(access_key)
            .await?
            .map(|k| (k.secret, k.account)))
    }

    /// Resolves the caller of a signed request; `now_unix` is the server clock.
    pub async fn authenticate(&self, req: &HttpRequest<'_>, now_unix: i64) -> Result<Caller> {
        let claim = ironbark_sigv4::claim(req).map_err(auth_error)?;
        let key = self
            .cached_key(&claim.access_key_id)
            .await?
            .ok_or_else(unknown_key)?;
        if let Err(e) = ironbark_sigv4::verify(req, &claim, &key.secret, now_unix) {
            if matches!(e, AuthError::SignatureMismatch)
                && let Ok(x) = ironbark_sigv4::explain(req)
            {
                // What AWS echoes back to help a client author; kept to the log.
                tracing::debug!(key = %key.id, string_to_sign = %x.string_to_sign, "signature mismatch");
            }
            return Err(auth_error(e));
        }
        Ok(Caller {
            account: key.account,
            user_name: key.user_name,
            access_key_id: key.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::cloud;
    use ironbark_sigv4::HttpRequest;
    use ironbark_types::ErrorKind;

    fn signed(key: &str, secret: &str, body: &str, now: i64) -> (Vec<(String, String)>, String) {
        let mut headers = vec![
            ("Host".to_string(), "127.0.0.1:8773".to_string()),
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
        ];
        ironbark_sigv4::sign_v4_header(
            "POST",
            "/",
            "",
            &mut headers,
            body.as_bytes(),
            key,
            secret,
            "eucalyptus",
            "ec2",
            now,
        );
        (headers, body.to_string())
    }

    #[tokio::test]
    async fn signed_requests_resolve_to_their_account() {
        let c = cloud().await;
        let creds = c.create_account("alice").await.unwrap();
        let now = 1_800_000_000;
        let body = "Action=DescribeRegions&Version=2016-11-15";
        let (h, b) = signed(
            creds.access_key_id.as_str(),
            &creds.secret_access_key,
            body,
            now,
        );
        let req = HttpRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b.as_bytes(),
        };
        let caller = c.authenticate(&req, now).await.unwrap();
        assert_eq!(caller.account.name, "alice");

        // Tampered body.
        let tampered = HttpRequest {
            body: b"Action=DescribeRegions&Version=2016-11-16",
            ..req
        };
        assert_eq!(
            c.authenticate(&tampered, now).await.unwrap_err().kind,
            ErrorKind::SignatureDoesNotMatch
        );
        // Clock 16 minutes off.
        assert_eq!(
            c.authenticate(&req, now + 16 * 60).await.unwrap_err().kind,
            ErrorKind::RequestExpired
        );
        // Wrong secret.
        let (h2, _) = signed(
            creds.access_key_id.as_str(),
            "wrongwrongwrongwrong",
            body,
            now,
        );
        let wrong = HttpRequest {
            headers: &h2,
            ..req
        };
        assert_eq!(
            c.authenticate(&wrong, now).await.unwrap_err().kind,
            ErrorKind::SignatureDoesNotMatch
        );
        // Unknown key.
        let (h3, _) = signed("AKIAUNKNOWNUNKNOWN12", "x", body, now);
        let unknown = HttpRequest {
            headers: &h3,
            ..req
        };
        assert_eq!(
            c.authenticate(&unknown, now).await.unwrap_err().kind,
            ErrorKind::AuthFailure
        );
        // Unsigned.
        let bare = HttpRequest {
            headers: &[],
            ..req
        };
        assert_eq!(
            c.authenticate(&bare, now).await.unwrap_err().kind,
            ErrorKind::MissingAuthenticationToken
        );
        // A deleted key stops working at once.
        c.delete_access_key(creds.access_key_id.as_str())
            .await
            .unwrap();
        assert_eq!(
            c.authenticate(&req, now).await.unwrap_err().kind,
            ErrorKind::AuthFailure
        );
    }
}
