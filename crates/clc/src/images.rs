//! Images: registered objects in Walrus that instances boot from.
//!
//! Registration reads the object once through an [`ObjectSource`] (which
//! enforces that the registering account may read it) to record its size
//! and SHA-256; every NC later verifies its download against that digest.
//! A machine image names the kernel and ramdisk it boots with; kernels and
//! ramdisks are images too (`eki-`, `eri-`). Visibility follows launch
//! permission: an account sees its own images, public ones, and those
//! shared with it.

use ironbark_types::*;

use crate::{Caller, Cloud};

/// Walrus as the CLC needs it: reading an object's digest as some account,
/// and handing NCs a URL to fetch it from.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync + 'static {
    /// Size and hex SHA-256 of `bucket/key`, if `account` may read it.
    /// Errors: `InvalidManifest` when it is absent or unreadable to them.
    async fn digest(&self, account: &AccountId, bucket: &str, key: &str) -> Result<(u64, String)>;
    /// A URL valid for `secs` seconds that GETs the object without credentials.
    async fn presign_get(&self, bucket: &str, key: &str, secs: u32) -> Result<String>;
    /// Starts a multipart upload of an object into one of the cloud's own
    /// buckets (snapshots), its parts to carry CRC-32s that Walrus combines
    /// into the object's; returns the upload id.
    async fn create_upload(&self, bucket: &str, key: &str) -> Result<String> {
        Err(Error::internal(format!(
            "{bucket}/{key}: this object store takes no uploads"
        )))
    }
    /// URLs valid for `secs` seconds, without credentials: UploadPart for
    /// parts 1 to `parts` of the upload, then CompleteMultipartUpload.
    async fn presign_upload(
        &self,
        bucket: &str,
        key: &str,
        _upload_id: &str,
        _parts: u32,
        _secs: u32,
    ) -> Result<(Vec<String>, String)> {
        Err(Error::internal(format!(
            "{bucket}/{key}: this object store takes no uploads"
        )))
    }
    /// Aborts an upload and drops its parts (one already completed or
    /// aborted is fine).
    async fn abort_upload(&self, _bucket: &str, _key: &str, _upload_id: &str) -> Result<()> {
        Ok(())
    }
    /// Makes the cloud's own private bucket if it does not exist.
    async fn ensure_system_bucket(&self, bucket: &str) -> Result<()> {
        Err(Error::internal(format!(
            "{bucket}: this object store has no buckets of its own"
        )))
    }
    /// Deletes an object of the cloud's own (absent is fine).
    async fn remove(&self, _bucket: &str, _key: &str) -> Result<()> {
        Ok(())
    }
    /// Size and ETag (unquoted) of an object of the cloud's own, if it
    /// exists.
    async fn system_head(&self, _bucket: &str, _key: &str) -> Result<Option<(u64, String)>> {
        Err(Error::internal("no object store is attached"))
    }
    /// The keys of the objects, and (key, upload id) of the open uploads,
    /// in one of the cloud's own buckets.
    async fn system_listing(&self, _bucket: &str) -> Result<SystemListing> {
        Ok(SystemListing::default())
    }
}

/// What one of the cloud's own buckets holds ([`ObjectSource::system_listing`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemListing {
    pub keys: Vec<String>,
    /// (key, upload id) of each open multipart upload.
    pub uploads: Vec<(String, String)>,
}

/// No object store attached: registration is refused. For tests of the
/// rest and for tools that only read state.
pub struct NoObjects;

#[async_trait::async_trait]
impl ObjectSource for NoObjects {
    async fn digest(&self, _a: &AccountId, bucket: &str, key: &str) -> Result<(u64, String)> {
        Err(Error::new(
            ErrorKind::ImageManifestNotFound,
            format!("{bucket}/{key}: no object store is attached"),
        ))
    }
    async fn presign_get(&self, bucket: &str, key: &str, _secs: u32) -> Result<String> {
        Err(Error::internal(format!(
            "{bucket}/{key}: no object store is attached"
        )))
    }
}

/// What RegisterImage asks for.
#[derive(Clone, Debug, Default)]
pub struct RegisterImage {
    pub location: String,
    pub name: String,
    pub description: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub architecture: Option<String>,
    /// Which kind of image the object is (kernel and ramdisk registration
    /// is the administrator's, as in Eucalyptus).
    pub kind: Option<ImageKind>,
}

/// A change to an image's launch permission.
#[derive(Clone, Debug, Default)]
pub struct LaunchPermissionChange {
    pub add_accounts: Vec<String>,
    pub remove_accounts: Vec<String>,
    pub add_all: bool,
    pub remove_all: bool,
}

fn not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::ImageNotFound,
        format!("The image id '[{id}]' does not exist"),
    )
}

/// An image name as RegisterImage accepts it (also checked by `ironbark admin
/// image import` before it uploads anything).
pub fn check_name(name: &str) -> Result<()> {
    let ok = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"()[] ./-'@_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_value(format!(
            "Invalid value '{name}' for Name: 3 to 128 characters from letters, digits and ( ) [ ] space . / - ' @ _"
        )))
    }
}

pub(crate) fn image_filter(i: &Image, tags: &[Tag], name: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    match name {
        "image-id" => one(i.id.as_str()),
        "image-type" => one(i.id.kind().as_str()),
        "name" => one(&i.name),
        "description" => one(&i.description),
        "owner-id" => one(i.account_id.as_str()),
        "manifest-location" => one(&i.location),
        "architecture" => one(&i.architecture),
        "kernel-id" => Some(i.kernel_id.iter().map(|k| k.to_string()).collect()),
        "ramdisk-id" => Some(i.ramdisk_id.iter().map(|k| k.to_string()).collect()),
        "is-public" => one(if i.public { "true" } else { "false" }),
        "state" => one("available"),
        "root-device-type" => one("instance-store"),
        "virtualization-type" => one("paravirtual"),
        "hypervisor" => one("kvm"),
        _ => crate::tags::tag_filter(tags, name),
    }
}

impl Cloud {
    /// An image the caller may launch, or NotFound (foreign private images
    /// are as absent as ids that never existed).
    pub async fn launchable_image(&self, caller: &Caller, id: &str) -> Result<Image> {
        let iid = ImageId::parse(id)?;
        match self.store.image(&iid).await? {
            Some(i) if i.launchable_by(&caller.account.id) => Ok(i),
            _ => Err(not_found(id)),
        }
    }

    async fn own_image(&self, caller: &Caller, id: &str) -> Result<Image> {
        let iid = ImageId::parse(id)?;
        match self.store.image(&iid).await? {
            Some(i) if i.account_id == caller.account.id => Ok(i),
            Some(i) if i.launchable_by(&caller.account.id) => Err(Error::new(
                ErrorKind::AuthFailure,
                format!("Not authorized for image: {id}"),
            )),
            _ => Err(not_found(id)),
        }
    }

    pub async fn register_image(&self, caller: &Caller, req: RegisterImage) -> Result<ImageId> {
        check_name(&req.name)?;
        let location = req.location.trim_start_matches('/');
        let (bucket, key) = location
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| {
                Error::invalid_value(format!(
                    "Invalid value '{}' for ImageLocation: expected bucket/key",
                    req.location
                ))
            })?;
        let kind = req.kind.unwrap_or(ImageKind::Machine);
        if kind != ImageKind::Machine && !caller.is_admin() {
            return Err(Error::new(
                ErrorKind::AuthFailure,
                "Only the cloud administrator registers kernels and ramdisks",
            ));
        }
        let arch = req.architecture.clone().unwrap_or_else(|| "x86_64".into());
        if arch != "x86_64" {
            return Err(Error::invalid_value(format!(
                "Invalid value '{arch}' for Architecture: this cloud runs x86_64"
            )));
        }
        let mut kernel_id = None;
        let mut ramdisk_id = None;
        if kind == ImageKind::Machine {
            let k = req
                .kernel_id
                .as_deref()
                .ok_or_else(|| Error::missing("KernelId"))?;
            let k = self.launchable_image(caller, k).await?;
            if k.id.kind() != ImageKind::Kernel {
                return Err(Error::invalid_value(format!(
                    "{} is not a kernel image",
                    k.id
                )));
            }
            kernel_id = Some(k.id);
            if let Some(r) = req.ramdisk_id.as_deref() {
                let r = self.launchable_image(caller, r).await?;
                if r.id.kind() != ImageKind::Ramdisk {
                    return Err(Error::invalid_value(format!(
                        "{} is not a ramdisk image",
                        r.id
                    )));
                }
                ramdisk_id = Some(r.id);
            }
        }
        let (size, sha256) = self.objects.digest(&caller.account.id, bucket, key).await?;
        let image = Image {
            id: ImageId::generate(kind),
            account_id: caller.account.id.clone(),
            name: req.name.clone(),
            description: req.description.clone().unwrap_or_default(),
            location: format!("{bucket}/{key}"),
            size,
            sha256,
            kernel_id,
            ramdisk_id,
            architecture: arch,
            public: false,
            launch_permissions: vec![],
            created_ms: now_ms(),
        };
        self.store.insert_image(&image).await?;
        tracing::info!(image = %image.id, owner = %caller.account.id, "image registered");
        Ok(image.id)
    }

    /// DescribeImages: what the caller may launch (own, public, shared),
    /// narrowed by ids, owners, executable-by and filters.
    pub async fn describe_images(
        &self,
        caller: &Caller,
        ids: &[String],
        owners: &[String],
        executable_by: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(Image, Vec<Tag>)>> {
        let me = &caller.account.id;
        let all = self.store.list_images().await?;
        let visible: Vec<Image> = all
            .into_iter()
            .filter(|i| i.launchable_by(me) || caller.is_admin())
            .collect();
        let mut wanted = Vec::new();
        for id in ids {
            let iid = ImageId::parse(id)?;
            if !visible.iter().any(|i| i.id == iid) {
                return Err(not_found(id));
            }
            wanted.push(iid);
        }
        let owner_ok = |i: &Image| {
            owners.is_empty()
                || owners
                    .iter()
                    .any(|o| (o == "self" && i.account_id == *me) || o == i.account_id.as_str())
        };
        let exec_ok = |i: &Image| {
            executable_by.is_empty()
                || executable_by.iter().any(|e| match e.as_str() {
                    "all" => i.public,
                    "self" => i.launchable_by(me),
                    other => AccountId::parse(other)
                        .map(|a| i.launchable_by(&a))
                        .unwrap_or(false),
                })
        };
        let tags = self.tags_by_resource(None).await?;
        let selected: Vec<(Image, Vec<Tag>)> = visible
            .into_iter()
            .filter(|i| wanted.is_empty() || wanted.contains(&i.id))
            .filter(owner_ok)
            .filter(exec_ok)
            .map(|i| {
                // Only the owner's own tags are shown, as in EC2.
                let t = tags
                    .get(i.id.as_str())
                    .map(|v| {
                        if i.account_id == *me {
                            v.clone()
                        } else {
                            vec![]
                        }
                    })
                    .unwrap_or_default();
                (i, t)
            })
            .collect();
        filter::apply(selected, filters, |(i, t), n| image_filter(i, t, n))
    }

    pub async fn deregister_image(&self, caller: &Caller, id: &str) -> Result<()> {
        let img = self.own_image(caller, id).await?;
        self.store.delete_image(&img.id).await?;
        Ok(())
    }

    /// The image an attribute call is about, which only its owner may read
    /// or change (launch permissions are the owner's business).
    pub async fn image_for_attribute(&self, caller: &Caller, id: &str) -> Result<Image> {
        self.own_image(caller, id).await
    }

    pub async fn modify_image_launch(
        &self,
        caller: &Caller,
        id: &str,
        change: &LaunchPermissionChange,
    ) -> Result<()> {
        let img = self.own_image(caller, id).await?;
        let mut accounts = img.launch_permissions.clone();
        for a in &change.add_accounts {
            let acct = AccountId::parse(a).map_err(|_| {
                Error::invalid_value(format!("Invalid value '{a}' for userId: not an account id"))
            })?;
            if self.store.account_by_id(&acct).await?.is_none() {
                return Err(Error::invalid_value(format!("Account {a} does not exist")));
            }
            if !accounts.contains(&acct) {
                accounts.push(acct);
            }
        }
        for a in &change.remove_accounts {
            accounts.retain(|x| x.as_str() != a);
        }
        let public = (img.public || change.add_all) && !change.remove_all;
        self.store
            .set_image_launch(&img.id, public, &accounts)
            .await
    }

    pub async fn reset_image_launch(&self, caller: &Caller, id: &str) -> Result<()> {
        let img = self.own_image(caller, id).await?;
        self.store.set_image_launch(&img.id, false, &[]).await
    }

    pub async fn set_image_description(&self, caller: &Caller, id: &str, d: &str) -> Result<()> {
        let img = self.own_image(caller, id).await?;
        if d.len() > 255 {
            return Err(Error::invalid_value(
                "Description is longer than 255 characters",
            ));
        }
        self.store.set_image_description(&img.id, d).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testutil::{caller, cloud};

    /// Objects every account may read, with a fixed digest.
    struct Objects;

    #[async_trait::async_trait]
    impl ObjectSource for Objects {
        async fn digest(&self, _a: &AccountId, bucket: &str, key: &str) -> Result<(u64, String)> {
            if key == "missing" {
                return Err(Error::new(
                    ErrorKind::ImageManifestNotFound,
                    format!("{bucket}/{key}"),
                ));
            }
            Ok((42, "cd".repeat(32)))
        }
        async fn presign_get(&self, bucket: &str, key: &str, _s: u32) -> Result<String> {
            Ok(format!("http://walrus/{bucket}/{key}"))
        }
    }

    #[tokio::test]
    async fn register_share_describe_deregister() {
        let c = cloud().await.with_objects(Arc::new(Objects));
        c.ensure_admin_account().await.unwrap();
        let admin = Caller {
            account: c.account_named("eucalyptus").await.unwrap(),
            ..caller(&c, "x").await
        };
        let alice = caller(&c, "alice").await;
        let bob = caller(&c, "bob").await;
        let reg = |loc: &str, name: &str, kind, k: Option<String>| RegisterImage {
            location: loc.into(),
            name: name.into(),
            kind,
            kernel_id: k,
            ..Default::default()
        };
        // Kernels are the administrator's to register.
        assert_eq!(
            c.register_image(&alice, reg("b/k", "kern", Some(ImageKind::Kernel), None))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::AuthFailure
        );
        let k = c
            .register_image(&admin, reg("b/k", "kern", Some(ImageKind::Kernel), None))
            .await
            .unwrap();
        assert_eq!(k.kind(), ImageKind::Kernel);
        // Not yet public: alice can't boot with it.
        assert_eq!(
            c.register_image(&alice, reg("b/m", "mine", None, Some(k.to_string())))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::ImageNotFound
        );
        c.modify_image_launch(
            &admin,
            k.as_str(),
            &LaunchPermissionChange {
                add_all: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let m = c
            .register_image(&alice, reg("b/m", "mine", None, Some(k.to_string())))
            .await
            .unwrap();
        assert_eq!(
            c.register_image(&alice, reg("b/m", "mine", None, Some(k.to_string())))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::ImageNameDuplicate
        );
        assert_eq!(
            c.register_image(&alice, reg("b/missing", "other", None, Some(k.to_string())))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::ImageManifestNotFound
        );
        // Bob sees the public kernel but not alice's machine image until shared.
        let ids = |v: Vec<(Image, Vec<Tag>)>| v.into_iter().map(|(i, _)| i.id).collect::<Vec<_>>();
        assert_eq!(
            ids(c.describe_images(&bob, &[], &[], &[], &[]).await.unwrap()),
            vec![k.clone()]
        );
        assert_eq!(
            c.describe_images(&bob, &[m.to_string()], &[], &[], &[])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::ImageNotFound
        );
        c.modify_image_launch(
            &alice,
            m.as_str(),
            &LaunchPermissionChange {
                add_accounts: vec![bob.account.id.to_string()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            c.describe_images(&bob, &[m.to_string()], &[], &[], &[])
                .await
                .unwrap()
                .len(),
            1
        );
        // Only the owner changes or deregisters it.
        assert_eq!(
            c.deregister_image(&bob, m.as_str()).await.unwrap_err().kind,
            ErrorKind::AuthFailure
        );
        let f = Filter {
            name: "image-type".into(),
            values: vec!["machine".into()],
        };
        assert_eq!(
            ids(c
                .describe_images(&alice, &[], &["self".into()], &[], &[f])
                .await
                .unwrap()),
            vec![m.clone()]
        );
        c.deregister_image(&alice, m.as_str()).await.unwrap();
        assert!(
            c.describe_images(&bob, &[], &[], &["self".into()], &[])
                .await
                .unwrap()
                .iter()
                .all(|(i, _)| i.id != m)
        );
        assert_eq!(
            c.describe_images(&alice, &["emi-zz".into()], &[], &[], &[])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::ImageIdMalformed
        );
    }
}
