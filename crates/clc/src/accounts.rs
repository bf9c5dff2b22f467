//! Accounts, users and access keys: what the `ironbark admin` tool manages.
//! Secrets are sealed here before they reach the store and opened only to
//! verify a signature.

use ironbark_store::StoredAccessKey;
use ironbark_types::*;

use crate::Cloud;

/// What a new account or key hands to its owner, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCredentials {
    pub account_id: AccountId,
    pub account_name: String,
    pub user_name: String,
    pub access_key_id: AccessKeyId,
    pub secret_access_key: String,
}

/// An access key as listed: never with its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKeyInfo {
    pub access_key_id: AccessKeyId,
    pub user_name: String,
    pub active: bool,
    pub created_ms: i64,
}

fn check_account_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_value(format!(
            "Invalid account name '{name}': 1 to 63 lower-case letters, digits, '-' or '.', starting with a letter or digit"
        )))
    }
}

fn check_user_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_value(format!(
            "Invalid user name '{name}': 1 to 64 letters, digits or +=,.@_-"
        )))
    }
}

impl Cloud {
    fn seal_secret(&self, id: &AccessKeyId, secret: &str) -> String {
        self.seal.seal(secret.as_bytes(), id.as_str().as_bytes())
    }

    pub(crate) fn open_secret(&self, key: &StoredAccessKey) -> Result<String> {
        let plain = self
            .seal
            .open(&key.sealed_secret, key.id.as_str().as_bytes())
            .map_err(|e| {
                Error::internal(format!("access key {} cannot be unsealed: {e}", key.id))
            })?;
        String::from_utf8(plain).map_err(|_| Error::internal("sealed secret is not UTF-8"))
    }

    /// Creates an account with its `admin` user and a first access key.
    pub async fn create_account(&self, name: &str) -> Result<NewCredentials> {
        check_account_name(name)?;
        let now = now_ms();
        let account = Account {
            id: AccountId::generate(),
            name: name.to_string(),
            created_ms: now,
        };
        let user = User {
            account_id: account.id.clone(),
            name: ACCOUNT_ADMIN_USER.into(),
            created_ms: now,
        };
        let id = AccessKeyId::generate();
        let secret = generate_secret_key();
        let key = StoredAccessKey {
            sealed_secret: self.seal_secret(&id, &secret),
            id: id.clone(),
            account_id: account.id.clone(),
            user_name: user.name.clone(),
            active: true,
            created_ms: now,
        };
        self.store.create_account(&account, &user, &key).await?;
        // Made now rather than on first use, so describing groups never
        // has to write.
        self.ensure_default_group(&account.id).await?;
        tracing::info!(account = %account.id, name, "account created");
        Ok(NewCredentials {
            account_id: account.id,
            account_name: account.name,
            user_name: user.name,
            access_key_id: id,
            secret_access_key: secret,
        })
    }

    /// The administrator account, created on first start. Returns its
    /// credentials only when it was created now, since only then is the
    /// secret known in clear to hand out.
    pub async fn ensure_admin_account(&self) -> Result<Option<NewCredentials>> {
        if self.store.account_by_name(ADMIN_ACCOUNT).await?.is_some() {
            return Ok(None);
        }
        match self.create_account(ADMIN_ACCOUNT).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind == ErrorKind::AccountDuplicate => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A working key of the administrator account, with its secret: what the
    /// cloud signs its own requests to Walrus with (image URLs for NCs).
    pub async fn system_credentials(&self) -> Result<(AccessKeyId, String)> {
        let admin = self.account_named(ADMIN_ACCOUNT).await?;
        let key = self
            .store
            .list_access_keys(&admin.id)
            .await?
            .into_iter()
            .find(|k| k.active)
            .ok_or_else(|| Error::internal("the administrator account has no active access key"))?;
        let secret = self.open_secret(&key)?;
        Ok((key.id, secret))
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.store.list_accounts().await
    }

    pub async fn account_named(&self, name: &str) -> Result<Account> {
        self.store.account_by_name(name).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::AccountNotFound,
                format!("Account '{name}' does not exist"),
            )
        })
    }

    /// Deletes an account and everything it owns. The administrator account
    /// is the cloud's own and cannot go.
    pub async fn delete_account(&self, name: &str) -> Result<()> {
        let account = self.account_named(name).await?;
        if account.is_admin() {
            return Err(Error::new(
                ErrorKind::DeleteConflict,
                "The administrator account cannot be deleted",
            ));
        }
        let live = self
            .store
            .list_instances(Some(&account.id))
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .count();
        if live > 0 {
            return Err(Error::new(
                ErrorKind::DeleteConflict,
                format!("Account '{name}' still has {live} instance(s); terminate them first"),
            ));
        }
        self.store.delete_account(&account.id).await
    }

    pub async fn create_user(&self, account: &str, user: &str) -> Result<User> {
        check_user_name(user)?;
        let account = self.account_named(account).await?;
        let u = User {
            account_id: account.id,
            name: user.to_string(),
            created_ms: now_ms(),
        };
        self.store.create_user(&u).await?;
        Ok(u)
    }

    /// Issues a key for a user; with `import`, takes over an existing
    /// id/secret pair so users moving from another cloud keep their keys.
    pub async fn create_access_key(
        &self,
        account: &str,
        user: &str,
        import: Option<(&str, &str)>,
    ) -> Result<NewCredentials> {
        let account = self.account_named(account).await?;
        let (id, secret) = match import {
            Some((id, secret)) => {
                let id = AccessKeyId::parse(id)?;
                if !(16..=128).contains(&secret.len())
                    || !secret.bytes().all(|b| (0x21..0x7f).contains(&b))
                {
                    return Err(Error::invalid_value(
                        "Invalid secret key: 16 to 128 printable characters without spaces",
                    ));
                }
                (id, secret.to_string())
            }
            None => (AccessKeyId::generate(), generate_secret_key()),
        };
        let key = StoredAccessKey {
            sealed_secret: self.seal_secret(&id, &secret),
            id: id.clone(),
            account_id: account.id.clone(),
            user_name: user.to_string(),
            active: true,
            created_ms: now_ms(),
        };
        self.store.insert_access_key(&key).await?;
        Ok(NewCredentials {
            account_id: account.id,
            account_name: account.name,
            user_name: user.to_string(),
            access_key_id: id,
            secret_access_key: secret,
        })
    }

    pub async fn delete_access_key(&self, id: &str) -> Result<()> {
        let id = AccessKeyId::parse(id).map_err(|_| {
            Error::new(
                ErrorKind::AccessKeyNotFound,
                format!("Access key {id} does not exist"),
            )
        })?;
        self.store.delete_access_key(&id).await
    }

    pub async fn list_access_keys(&self, account: &str) -> Result<Vec<AccessKeyInfo>> {
        let account = self.account_named(account).await?;
        Ok(self
            .store
            .list_access_keys(&account.id)
            .await?
            .into_iter()
            .map(|k| AccessKeyInfo {
                access_key_id: k.id,
                user_name: k.user_name,
                active: k.active,
                created_ms: k.created_ms,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::cloud;
    use ironbark_types::ErrorKind;

    #[tokio::test]
    async fn accounts_keys_and_sealing() {
        let c = cloud().await;
        let admin = c.ensure_admin_account().await.unwrap().unwrap();
        assert!(c.ensure_admin_account().await.unwrap().is_none());
        assert_eq!(admin.account_name, "eucalyptus");

        let creds = c.create_account("alice").await.unwrap();
        let stored = c
            .store
            .access_key(&creds.access_key_id)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.sealed_secret.contains(&creds.secret_access_key));
        assert_eq!(c.open_secret(&stored).unwrap(), creds.secret_access_key);
        assert_eq!(
            c.create_account("alice").await.unwrap_err().kind,
            ErrorKind::AccountDuplicate
        );
        assert!(c.create_account("Bad Name").await.is_err());

        let imported = c
            .create_access_key(
                "alice",
                "admin",
                Some((
                    "AKIAIOSFODNN7EXAMPLE",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                )),
            )
            .await
            .unwrap();
        assert_eq!(imported.access_key_id.as_str(), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(c.list_access_keys("alice").await.unwrap().len(), 2);
        assert_eq!(
            c.create_access_key("alice", "nobody", None)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::UserNotFound
        );
        c.create_user("alice", "bob").await.unwrap();
        c.create_access_key("alice", "bob", None).await.unwrap();
        c.delete_access_key("AKIAIOSFODNN7EXAMPLE").await.unwrap();
        assert_eq!(c.list_access_keys("alice").await.unwrap().len(), 2);

        assert_eq!(
            c.delete_account("eucalyptus").await.unwrap_err().kind,
            ErrorKind::DeleteConflict
        );
        c.delete_account("alice").await.unwrap();
        assert!(
            c.store
                .access_key(&creds.access_key_id)
                .await
                .unwrap()
                .is_none()
        );
    }
}
