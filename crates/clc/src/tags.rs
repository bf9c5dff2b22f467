//! Tags on the caller's resources, and the `tag:` filters every Describe
//! call shares. A resource's kind is read off its id prefix; the store
//! checks, in the same transaction, that the caller owns it.

use std::collections::HashMap;

use ironbark_store::TagSelector;
use ironbark_types::*;

use crate::{Caller, Cloud};

/// The generic tag filters (`tag:Key`, `tag-key`, `tag-value`) of any resource.
pub(crate) fn tag_filter(tags: &[Tag], name: &str) -> Option<Vec<String>> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(
            tags.iter()
                .filter(|t| t.key == key)
                .map(|t| t.value.clone())
                .collect(),
        );
    }
    match name {
        "tag-key" => Some(tags.iter().map(|t| t.key.clone()).collect()),
        "tag-value" => Some(tags.iter().map(|t| t.value.clone()).collect()),
        _ => None,
    }
}

/// The names [`tag_filter`] answers.
pub(crate) fn is_tag_filter(name: &str) -> bool {
    name.starts_with("tag:") || matches!(name, "tag-key" | "tag-value")
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_value("Tag keys must not be empty"));
    }
    if key.chars().count() > 128 {
        return Err(Error::invalid_value(format!(
            "Tag key exceeds the maximum length of 128 characters: {key}"
        )));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(Error::invalid_value(
            "Tag keys starting with 'aws:' are reserved for internal use",
        ));
    }
    Ok(())
}

fn resource_kind(id: &str) -> Result<ResourceType> {
    let kind = ResourceType::of_id(id)
        .ok_or_else(|| Error::new(ErrorKind::InvalidId, format!("The ID '{id}' is not valid")))?;
    let well_formed = match kind {
        ResourceType::SecurityGroup => SecurityGroupId::parse(id).is_ok(),
        ResourceType::KeyPair => KeyPairId::parse(id).is_ok(),
        ResourceType::Image => ImageId::parse(id).is_ok_and(|i| i.as_str() == id),
        ResourceType::Volume => VolumeId::parse(id).is_ok(),
        ResourceType::Snapshot => SnapshotId::parse(id).is_ok(),
        ResourceType::Instance => InstanceId::parse(id).is_ok(),
    };
    if well_formed {
        Ok(kind)
    } else {
        Err(Error::new(
            ErrorKind::InvalidId,
            format!("The ID '{id}' is not valid"),
        ))
    }
}

impl Cloud {
    pub(crate) async fn tags_by_resource(
        &self,
        scope: Option<&AccountId>,
    ) -> Result<HashMap<String, Vec<Tag>>> {
        let mut m: HashMap<String, Vec<Tag>> = HashMap::new();
        for t in self.store.list_tags(scope).await? {
            m.entry(t.resource_id.clone()).or_default().push(t);
        }
        Ok(m)
    }

    /// Checks tags before the resource they are for is made, so a request
    /// with bad tags (TagSpecification) creates nothing.
    pub fn check_new_tags(&self, tags: &[(String, Option<String>)]) -> Result<()> {
        for (k, v) in tags {
            check_key(k)?;
            if v.as_deref().unwrap_or("").chars().count() > 256 {
                return Err(Error::invalid_value(format!(
                    "Tag value exceeds the maximum length of 256 characters for key {k}"
                )));
            }
        }
        if tags.len() > ironbark_store::MAX_TAGS_PER_RESOURCE {
            return Err(Error::new(
                ErrorKind::TagLimitExceeded,
                "The maximum number of Tags for a resource has been reached (50)",
            ));
        }
        Ok(())
    }

    pub async fn create_tags(
        &self,
        caller: &Caller,
        resources: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<()> {
        if resources.is_empty() {
            return Err(Error::missing("ResourceId"));
        }
        if tags.is_empty() {
            return Err(Error::missing("Tag"));
        }
        let mut res = Vec::new();
        for id in resources {
            res.push((id.clone(), resource_kind(id)?));
        }
        let mut kv = Vec::new();
        for (k, v) in tags {
            check_key(k)?;
            let v = v.clone().unwrap_or_default();
            if v.chars().count() > 256 {
                return Err(Error::invalid_value(format!(
                    "Tag value exceeds the maximum length of 256 characters for key {k}"
                )));
            }
            kv.push((k.clone(), v));
        }
        self.store.put_tags(&caller.account.id, &res, &kv).await
    }

    pub async fn delete_tags(
        &self,
        caller: &Caller,
        resources: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<()> {
        if resources.is_empty() {
            return Err(Error::missing("ResourceId"));
        }
        let mut res = Vec::new();
        for id in resources {
            res.push((id.clone(), resource_kind(id)?));
        }
        let mut sel = Vec::new();
        for (k, v) in tags {
            check_key(k)?;
            sel.push(TagSelector {
                key: k.clone(),
                value: v.clone(),
            });
        }
        self.store.delete_tags(&caller.account.id, &res, &sel).await
    }

    pub async fn describe_tags(&self, caller: &Caller, filters: &[Filter]) -> Result<Vec<Tag>> {
        // A bad filter name fails even when the account has no tags.
        filter::check_names(filters, |n| {
            matches!(n, "key" | "value" | "resource-id" | "resource-type")
        })?;
        let all = self.store.list_tags(Some(&caller.account.id)).await?;
        filter::apply(all, filters, |t, n| {
            let one = |s: &str| Some(vec![s.to_string()]);
            match n {
                "key" => one(&t.key),
                "value" => one(&t.value),
                "resource-id" => one(&t.resource_id),
                "resource-type" => one(t.resource_type.as_str()),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{caller, cloud};
    use ironbark_types::{ErrorKind, Filter};

    #[tokio::test]
    async fn tags_are_per_account_and_filterable() {
        let c = cloud().await;
        let a = caller(&c, "alice").await;
        let b = caller(&c, "bob").await;
        let g = c
            .create_security_group(&a, "web", "w")
            .await
            .unwrap()
            .to_string();
        let t = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
        c.create_tags(
            &a,
            std::slice::from_ref(&g),
            &[t("Name", "web"), t("env", "prod")],
        )
        .await
        .unwrap();
        assert_eq!(
            c.create_tags(&b, std::slice::from_ref(&g), &[t("x", "y")])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::GroupNotFound
        );
        assert_eq!(
            c.create_tags(&a, &["i-xyz".into()], &[t("x", "y")])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InvalidId
        );
        assert_eq!(
            c.create_tags(&a, &["i-12345678".into()], &[t("x", "y")])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InstanceNotFound
        );
        assert_eq!(
            c.create_tags(&a, std::slice::from_ref(&g), &[t("aws:x", "y")])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InvalidParameterValue
        );
        assert!(c.describe_tags(&b, &[]).await.unwrap().is_empty());
        let f = Filter {
            name: "key".into(),
            values: vec!["env".into()],
        };
        let got = c.describe_tags(&a, &[f]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value, "prod");
        let f = Filter {
            name: "tag:env".into(),
            values: vec!["prod".into()],
        };
        assert_eq!(
            c.describe_security_groups(&a, &[], &[], &[f])
                .await
                .unwrap()
                .len(),
            1
        );
        c.delete_tags(&a, std::slice::from_ref(&g), &[("env".into(), None)])
            .await
            .unwrap();
        assert_eq!(c.describe_tags(&a, &[]).await.unwrap().len(), 1);
    }
}
