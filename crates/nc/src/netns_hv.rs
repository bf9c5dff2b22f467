//! A lightweight instance driver: an "instance" is a network namespace
//! with one veth leg on the tap's bridge, its MAC the NIC's, its address
//! leased by DHCP from the CC (busybox `udhcpc`), so it meets the cloud's
//! network exactly as a VM's NIC would, at a tiny fraction of a VM's
//! cost. For data-path tests (many hosts, many groups) and the network
//! bench; never the default driver: `ironbark up` runs QEMU.
//!
//! The host leg is named like the tap (`nic.tap`) so the node's tap sweep
//! and teardown find it; the namespace (`<prefix><instance id>`) is
//! recorded in the instance directory, which is how [`Hypervisor::find`]
//! and [`Hypervisor::stop`] find it again. Deleting the namespace deletes
//! both legs. With [`NetnsHypervisorConfig::host_netns`] the host legs
//! live in that namespace (a test's "NC host"). Only the first NIC is
//! wired.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use ironbark_node_api::NicSpec;
use tokio::process::Command;

use crate::hypervisor::{HvError, Hypervisor, Launch, TapInfo, VmInfo};

/// Written in the instance directory: the instance's namespace name.
const NETNS_FILE: &str = "netns";
/// `udhcpc`'s hook, written next to it.
const DHCP_SCRIPT: &str = "udhcpc.sh";

const UDHCPC_HOOK: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  bound|renew)\n\
    ip addr flush dev \"$interface\"\n\
    ip addr add \"$ip/$mask\" dev \"$interface\"\n\
    ip route replace default via \"${router%% *}\" dev \"$interface\" ;;\n\
esac\n\
exit 0\n";

#[derive(Clone, Debug)]
pub struct NetnsHypervisorConfig {
    /// Where the host legs live (the NC's namespace); `None`: the NC's own.
    pub host_netns: Option<String>,
    /// Instance namespaces are `<prefix><instance id>`.
    pub prefix: String,
    /// How long the first DHCP lease may take.
    pub dhcp_timeout: Duration,
}

impl Default for NetnsHypervisorConfig {
    fn default() -> Self {
        NetnsHypervisorConfig {
            host_netns: None,
            prefix: "ibi-".into(),
            dhcp_timeout: Duration::from_secs(15),
        }
    }
}

pub struct NetnsHypervisor {
    cfg: NetnsHypervisorConfig,
}

impl NetnsHypervisor {
    pub fn new(cfg: NetnsHypervisorConfig) -> Self {
        NetnsHypervisor { cfg }
    }

    /// The namespace an instance runs in.
    pub fn netns_of(&self, instance_id: &str) -> String {
        format!("{}{instance_id}", self.cfg.prefix)
    }

    async fn run(&self, argv: &[&str], limit: Duration) -> Result<String, HvError> {
        let shown = argv.join(" ");
        let out = tokio::time::timeout(
            limit,
            Command::new(argv[0])
                .args(&argv[1..])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| HvError(format!("`{shown}` timed out")))?
        .map_err(|e| HvError(format!("running `{shown}`: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HvError(format!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// `ip` in the host namespace.
    async fn host_ip(&self, args: &[&str]) -> Result<String, HvError> {
        let mut argv = vec!["ip"];
        if let Some(ns) = &self.cfg.host_netns {
            argv.extend(["-n", ns.as_str()]);
        }
        argv.extend(args);
        self.run(&argv, Duration::from_secs(10)).await
    }

    fn recorded(dir: &Path) -> Option<String> {
        let ns = std::fs::read_to_string(dir.join(NETNS_FILE)).ok()?;
        let ns = ns.trim().to_string();
        Path::new("/run/netns").join(&ns).exists().then_some(ns)
    }
}

#[async_trait]
impl Hypervisor for NetnsHypervisor {
    async fn start(&self, launch: &Launch) -> Result<VmInfo, HvError> {
        if let Some(vm) = self.find(&launch.dir).await {
            return Ok(vm);
        }
        let nic = launch
            .nics
            .first()
            .ok_or_else(|| HvError("a netns instance needs a NIC".into()))?;
        let ns = self.netns_of(&launch.instance_id);
        let _ = self
            .run(&["ip", "netns", "del", &ns], Duration::from_secs(10))
            .await;
        self.delete_tap(&nic.tap).await?;
        self.run(&["ip", "netns", "add", &ns], Duration::from_secs(10))
            .await?;
        std::fs::write(launch.dir.join(NETNS_FILE), &ns)
            .map_err(|e| HvError(format!("recording the namespace: {e}")))?;
        self.host_ip(&[
            "link", "add", &nic.tap, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .await?;
        self.host_ip(&["link", "set", &nic.tap, "master", &nic.bridge, "up"])
            .await?;
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "-n", ns.as_str()];
            v.extend_from_slice(args);
            v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        for args in [
            inside(&["link", "set", "lo", "up"]),
            inside(&["link", "set", "eth0", "address", &nic.mac, "up"]),
        ] {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(&argv, Duration::from_secs(10)).await?;
        }
        let script: PathBuf = launch.dir.join(DHCP_SCRIPT);
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&script, UDHCPC_HOOK)
                .and_then(|_| {
                    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| HvError(format!("writing the DHCP hook: {e}")))?;
        }
        let tries = self.cfg.dhcp_timeout.as_secs().max(1).to_string();
        let script = script.display().to_string();
        // The lease is the instance's "boot": it runs once it has it.
        self.run(
            &[
                "ip", "netns", "exec", &ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f",
                "-t", &tries, "-T", "1", "-s", &script,
            ],
            self.cfg.dhcp_timeout + Duration::from_secs(5),
        )
        .await?;
        Ok(VmInfo { pid: None })
    }

    async fn find(&self, dir: &Path) -> Option<VmInfo> {
        Self::recorded(dir).map(|_| VmInfo { pid: None })
    }

    async fn stop(&self, dir: &Path) -> Result<(), HvError> {
        if let Some(ns) = Self::recorded(dir) {
            self.run(&["ip", "netns", "del", &ns], Duration::from_secs(10))
                .await?;
        }
        let _ = std::fs::remove_file(dir.join(NETNS_FILE));
        Ok(())
    }

    async fn reboot(&self, _dir: &Path) -> Result<(), HvError> {
        Ok(())
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), HvError> {
        match self.host_ip(&["link", "del", tap]).await {
            Err(HvError(m)) if !m.contains("Cannot find device") => Err(HvError(m)),
            _ => Ok(()),
        }
    }

    async fn list_taps(&self) -> Result<Vec<TapInfo>, HvError> {
        // A host leg exists only while its namespace does: always in use.
        let out = self
            .host_ip(&["-o", "link", "show", "type", "veth"])
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let n = l.split(": ").nth(1)?;
                let name = n.split('@').next().unwrap_or(n).to_string();
                let mut words = l.split_whitespace();
                let master = words
                    .by_ref()
                    .find(|w| *w == "master")
                    .and_then(|_| words.next())
                    .map(str::to_string);
                Some(TapInfo {
                    name,
                    in_use: true,
                    master,
                })
            })
            .filter(|t| t.name.starts_with("tap"))
            .collect())
    }

    async fn attach_tap(&self, nic: &NicSpec) -> Result<(), HvError> {
        self.host_ip(&["link", "set", &nic.tap, "master", &nic.bridge, "up"])
            .await
            .map(drop)
    }
}
