//! The administrator's client configuration under `<data>/admin/`:
//! `credentials` and `config` for the AWS CLI and boto3 (profile
//! `ironbark-admin`), and `eucarc` for euca2ools-style tools.
//!
//! The secret is only known in clear when the key is created, so
//! `credentials` is the record of it: on later starts the key is read back
//! from there and the other two files are rewritten with the current
//! endpoints. If the file was lost, a fresh admin key is issued.

use std::path::{Path, PathBuf};

use ironbark_clc::Cloud;
use ironbark_types::{ACCOUNT_ADMIN_USER, ADMIN_ACCOUNT, Error, Result};

pub const PROFILE: &str = "ironbark-admin";

pub struct Endpoints {
    pub ec2: String,
    pub s3: String,
    pub region: String,
}

fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}

/// Writes `contents` to `path` atomically with mode 0600.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    ironbark_clc::write_private_file(path, contents.as_bytes())
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))
}

/// Reads the key back from a credentials file this module wrote.
fn read_key(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut id = None;
    let mut secret = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((id?, secret?))
}

/// Makes sure the admin account exists and its client files are current.
pub async fn ensure(cloud: &Cloud, data_dir: &Path, ep: &Endpoints) -> Result<()> {
    let dir = admin_dir(data_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    let cred_path = dir.join("credentials");
    let (id, secret) = match cloud.ensure_admin_account().await? {
        Some(c) => (c.access_key_id.to_string(), c.secret_access_key),
        None => match read_key(&cred_path) {
            Some(k) => k,
            None => {
                tracing::warn!(path = %cred_path.display(), "admin credentials file missing; issuing a new admin key");
                let c = cloud
                    .create_access_key(ADMIN_ACCOUNT, ACCOUNT_ADMIN_USER, None)
                    .await?;
                (c.access_key_id.to_string(), c.secret_access_key)
            }
        },
    };
    write_private(
        &cred_path,
        &format!("[{PROFILE}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )?;
    write_private(
        &dir.join("config"),
        &format!(
            "[profile {PROFILE}]\nregion = {region}\nendpoint_url = {ec2}\nservices = {PROFILE}\n\n\
             [services {PROFILE}]\nec2 =\n  endpoint_url = {ec2}\ns3 =\n  endpoint_url = {s3}\n",
            region = ep.region,
            ec2 = ep.ec2,
            s3 = ep.s3,
        ),
    )?;
    write_private(
        &dir.join("eucarc"),
        &format!(
            "# ironbark administrator credentials; source this file.\n\
             export EC2_URL={ec2}\nexport S3_URL={s3}\n\
             export EC2_ACCESS_KEY={id}\nexport EC2_SECRET_KEY={secret}\n\
             export AWS_ACCESS_KEY_ID={id}\nexport AWS_SECRET_ACCESS_KEY={secret}\n\
             export AWS_DEFAULT_REGION={region}\n",
            ec2 = ep.ec2,
            s3 = ep.s3,
            region = ep.region,
        ),
    )?;
    Ok(())
}
