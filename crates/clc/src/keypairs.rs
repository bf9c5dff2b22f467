//! Key pairs: the SSH keys instances will be given. Creation generates the
//! key here and returns the private half exactly once; import takes the
//! public half in any format EC2 accepts. Fingerprints follow EC2's rules
//! (see `ironbark-keypair`).

use base64::Engine;
use ironbark_keypair::KeyType;
use ironbark_types::*;

use crate::{Caller, Cloud, check_text};

/// CreateKeyPair's answer: the record and its private key.
#[derive(Clone, Debug)]
pub struct CreatedKeyPair {
    pub key_pair: KeyPair,
    pub private_key: String,
}

fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::KeyPairNotFound,
        format!("The key pair '{name}' does not exist"),
    )
}

fn parse_key_type(t: Option<&str>) -> Result<KeyType> {
    match t.unwrap_or("rsa") {
        "rsa" => Ok(KeyType::Rsa),
        "ed25519" => Ok(KeyType::Ed25519),
        other => Err(Error::invalid_value(format!(
            "Invalid value '{other}' for KeyType. Valid values: rsa, ed25519"
        ))),
    }
}

pub(crate) fn key_pair_filter(kp: &KeyPair, tags: &[Tag], name: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    match name {
        "key-name" => one(&kp.name),
        "fingerprint" => one(&kp.fingerprint),
        "key-pair-id" => one(kp.id.as_str()),
        "key-type" => one(&kp.key_type),
        _ => crate::tags::tag_filter(tags, name),
    }
}

/// The names [`key_pair_filter`] answers, for a caller with no key to probe.
fn is_key_pair_filter(name: &str) -> bool {
    matches!(
        name,
        "key-name" | "fingerprint" | "key-pair-id" | "key-type"
    ) || crate::tags::is_tag_filter(name)
}

impl Cloud {
    async fn check_new_key_name(&self, caller: &Caller, name: &str) -> Result<()> {
        check_text("KeyName", name, 255)?;
        let exists = self
            .store
            .key_pair_named(&caller.account.id, name)
            .await?
            .is_some();
        if exists {
            return Err(Error::new(
                ErrorKind::KeyPairDuplicate,
                format!("The keypair '{name}' already exists."),
            ));
        }
        Ok(())
    }

    pub async fn create_key_pair(
        &self,
        caller: &Caller,
        name: &str,
        key_type: Option<&str>,
    ) -> Result<CreatedKeyPair> {
        let kt = parse_key_type(key_type)?;
        // Refuse before spending a key generation on a name that is taken.
        self.check_new_key_name(caller, name).await?;
        // RSA generation is CPU-bound for tens of milliseconds: keep it off
        // the threads that serve other requests.
        let _permit = self.keygen.acquire().await.map_err(Error::internal)?;
        let generated = tokio::task::spawn_blocking(move || ironbark_keypair::generate(kt))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        let key_pair = KeyPair {
            id: KeyPairId::generate(),
            account_id: caller.account.id.clone(),
            name: name.to_string(),
            fingerprint: generated.public.fingerprint.clone(),
            key_type: kt.as_str().to_string(),
            public_key: generated.public.openssh.clone(),
            created_ms: now_ms(),
        };
        self.store.insert_key_pair(&key_pair).await?;
        Ok(CreatedKeyPair {
            key_pair,
            private_key: generated.private_key.clone(),
        })
    }

    /// `material` is the `PublicKeyMaterial` parameter: base64 of the key
    /// file, as the AWS CLI and boto3 send it. Some older tools send the key
    /// text itself; that is accepted too.
    pub async fn import_key_pair(
        &self,
        caller: &Caller,
        name: &str,
        material: &str,
    ) -> Result<KeyPair> {
        if material.is_empty() {
            return Err(Error::missing("PublicKeyMaterial"));
        }
        self.check_new_key_name(caller, name).await?;
        let compact: String = material.chars().filter(|c| !c.is_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .ok();
        let parsed = decoded
            .as_deref()
            .map(ironbark_keypair::import)
            .and_then(|r| r.ok())
            .map(Ok)
            .unwrap_or_else(|| ironbark_keypair::import(material.as_bytes()))
            .map_err(|e| {
                Error::new(
                    ErrorKind::KeyFormat,
                    format!("Key is not in valid OpenSSH public key format: {e}"),
                )
            })?;
        let key_pair = KeyPair {
            id: KeyPairId::generate(),
            account_id: caller.account.id.clone(),
            name: name.to_string(),
            fingerprint: parsed.fingerprint,
            key_type: parsed.key_type.as_str().to_string(),
            public_key: parsed.openssh,
            created_ms: now_ms(),
        };
        self.store.insert_key_pair(&key_pair).await?;
        Ok(key_pair)
    }

    /// DescribeKeyPairs. Named keys must exist; the administrator's
    /// `verbose` name lists every account's keys.
    pub async fn describe_key_pairs(
        &self,
        caller: &Caller,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(KeyPair, Vec<Tag>)>> {
        // A bad filter name fails even when the account has no key pairs.
        filter::check_names(filters, is_key_pair_filter)?;
        let verbose = caller.is_admin() && names.iter().any(|n| n == "verbose");
        let names: Vec<&String> = names
            .iter()
            .filter(|n| !(verbose && *n == "verbose"))
            .collect();
        let scope = if verbose {
            None
        } else {
            Some(&caller.account.id)
        };
        let all = self.store.list_key_pairs(scope).await?;
        for n in &names {
            if !all.iter().any(|k| &k.name == *n) {
                return Err(not_found(n));
            }
        }
        for id in ids {
            if !all.iter().any(|k| k.id.as_str() == id) {
                return Err(not_found(id));
            }
        }
        let selected: Vec<KeyPair> = all
            .into_iter()
            .filter(|k| names.is_empty() || names.iter().any(|n| **n == k.name))
            .filter(|k| ids.is_empty() || ids.iter().any(|i| i == k.id.as_str()))
            .collect();
        let tags = self.tags_by_resource(scope).await?;
        let with_tags: Vec<(KeyPair, Vec<Tag>)> = selected
            .into_iter()
            .map(|k| {
                let t = tags.get(k.id.as_str()).cloned().unwrap_or_default();
                (k, t)
            })
            .collect();
        filter::apply(with_tags, filters, |(k, t), n| key_pair_filter(k, t, n))
    }

    /// DeleteKeyPair by name or id. As in EC2, deleting a key that is not
    /// there succeeds: the caller's intent (no such key) holds.
    pub async fn delete_key_pair(
        &self,
        caller: &Caller,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<()> {
        let name = match (name, id) {
            (Some(n), _) => n.to_string(),
            (None, Some(id)) => {
                let keys = self.store.list_key_pairs(Some(&caller.account.id)).await?;
                match keys.into_iter().find(|k| k.id.as_str() == id) {
                    Some(k) => k.name,
                    None => return Ok(()),
                }
            }
            (None, None) => return Err(Error::missing("KeyName")),
        };
        self.store
            .delete_key_pair(&caller.account.id, &name)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{caller, cloud};
    use base64::Engine;
    use ironbark_types::{ErrorKind, Filter};

    #[tokio::test]
    async fn create_import_describe_delete() {
        let c = cloud().await;
        let alice = caller(&c, "alice").await;
        let bob = caller(&c, "bob").await;
        let k = c.create_key_pair(&alice, "k1", None).await.unwrap();
        assert!(k.private_key.contains("BEGIN RSA PRIVATE KEY"));
        assert_eq!(k.key_pair.fingerprint.len(), 59);
        assert_eq!(
            c.create_key_pair(&alice, "k1", None)
                .await
                .unwrap_err()
                .kind,
            ErrorKind::KeyPairDuplicate
        );
        assert_eq!(
            c.create_key_pair(&alice, "k2", Some("dsa"))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InvalidParameterValue
        );
        // Import the public half of an ed25519 key under another name, as base64 of the file.
        let ed = c
            .create_key_pair(&alice, "ed", Some("ed25519"))
            .await
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(format!("{} me@host\n", ed.key_pair.public_key));
        let imp = c.import_key_pair(&alice, "imp", &b64).await.unwrap();
        assert_eq!(imp.fingerprint, ed.key_pair.fingerprint);
        assert_eq!(
            c.import_key_pair(&alice, "bad", "bm90IGEga2V5")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::KeyFormat
        );

        // Isolation: bob sees none of alice's keys and can't name them.
        assert!(
            c.describe_key_pairs(&bob, &[], &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            c.describe_key_pairs(&bob, &["k1".into()], &[], &[])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::KeyPairNotFound
        );
        c.delete_key_pair(&bob, Some("k1"), None).await.unwrap();
        assert_eq!(
            c.describe_key_pairs(&alice, &[], &[], &[])
                .await
                .unwrap()
                .len(),
            3
        );

        let f = Filter {
            name: "key-type".into(),
            values: vec!["ed25519".into()],
        };
        assert_eq!(
            c.describe_key_pairs(&alice, &[], &[], &[f])
                .await
                .unwrap()
                .len(),
            2
        );
        c.delete_key_pair(&alice, None, Some(k.key_pair.id.as_str()))
            .await
            .unwrap();
        assert_eq!(
            c.describe_key_pairs(&alice, &[], &[], &[])
                .await
                .unwrap()
                .len(),
            2
        );
    }
}
