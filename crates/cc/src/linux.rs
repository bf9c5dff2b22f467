//! The real [`HostNet`]: `ip` for bridges and addresses, one daemonized
//! `dnsmasq` per segment for DHCP, `nft -f -` for the table.
//!
//! Tools are driven as processes rather than through netlink libraries:
//! the commands are the ones an operator would type to inspect or repair
//! the host, and every one of them can be run inside a network namespace
//! with `ip netns exec` (the `netns` option), which is how tests keep off
//! the host's own network.
//!
//! dnsmasq runs as a daemon (it outlives a CC restart, and the next
//! reconcile adopts it by its pid file). Its files live in
//! `<state>/dhcp/<bridge>/`; a change of configuration restarts it, a change
//! of the host list only rewrites `hosts` and sends SIGHUP, on which
//! dnsmasq rereads it without forgetting its leases. dnsmasq drops root
//! after starting and rereads the host list as its unprivileged user, so
//! the lists live apart, in [`CcConfig::dhcp_hosts_dir`] (world-readable:
//! MACs and private addresses, nothing secret), and the state directory may
//! be 0700; everything else dnsmasq opens while still root.
//!
//! The nftables table is replaced in one transaction: `nft -f -` with
//! `table ip ironbark {}` (creates it if missing), `delete table`, then the
//! new table and its elements, so the host never has half a ruleset. The
//! one element of the table's `state` set is the plan's fingerprints
//! ([`NftPlan::state`]): as its key (128 bits written as an IPv6 address,
//! [`state_key`]) and in its comment, which is how the next reconcile knows
//! whether the table is current without listing thousands of elements.
//! Element-only changes are one `nft -f -` transaction too, which starts by
//! deleting the `state` element of the state it expects: when the table
//! holds another (flushed, reloaded by someone else) that delete fails and
//! takes the whole transaction with it, so nothing changes. That is what
//! lets a change be sent as the difference from what this process last
//! loaded without reading the table first ([`HostNet::nft_loaded`]); when
//! it does not know (it restarted, a transaction failed) the reconciler
//! reads the state, and if that is not what this process loaded the whole
//! table is replaced (faster than flushing and refilling every set).
//!
//! Each `nft` run fills its cache from the kernel first: the table, its
//! chains and every set's declaration (about 3,000 of each at 1,000
//! groups: most of an element transaction's CPU time), and the elements of
//! any plain interval set, which is why no set here is one (see
//! [`crate::filter`]). The input chain's rules are not read.
//!
//! Conntrack entries are deleted with `conntrack -D` (conntrack-tools).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::CcConfig;
use crate::filter::{self, Elements};
use crate::hostnet::{BridgeState, DhcpState, HostNet, NetError};
use crate::plan::{DhcpPlan, NFT_COMMENT_PREFIX, NFT_TABLE, NftPlan, files};

/// How long a dnsmasq gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub struct LinuxHostNet {
    netns: Option<String>,
    state_dir: PathBuf,
    dnsmasq: PathBuf,
    /// The state string and elements this process last loaded, so an
    /// element change can be sent as a difference.
    loaded: std::sync::Mutex<Option<(String, Elements)>>,
    segnet: ironbark_nc::segnet::LinuxSegNet,
}

impl LinuxHostNet {
    pub fn new(cfg: &CcConfig) -> Self {
        LinuxHostNet {
            netns: cfg.netns.clone(),
            state_dir: cfg.state_dir.clone(),
            dnsmasq: cfg.dnsmasq.clone(),
            loaded: std::sync::Mutex::new(None),
            segnet: ironbark_nc::segnet::LinuxSegNet::new(cfg.netns.clone()),
        }
    }

    /// Records what the table now holds, or (`None`) that this process
    /// no longer knows.
    fn remember(&self, nft: Option<&NftPlan>) {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) =
            nft.map(|n| (n.state(), n.elements.clone()));
    }

    fn dhcp_root(&self) -> PathBuf {
        self.state_dir.join("dhcp")
    }

    /// Runs `program args` (in the namespace, if any), feeding `stdin`;
    /// its stdout if it exits 0.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, NetError> {
        let argv = command_line(self.netns.as_deref(), program, args);
        let shown = argv.join(" ");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| NetError::Io {
            what: format!("running `{shown}`"),
            source: e,
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| NetError::Io {
                    what: format!("writing to `{shown}`"),
                    source: e,
                })?;
            // Closing stdin is what tells `nft -f -` the input is complete.
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(|e| NetError::Io {
            what: format!("waiting for `{shown}`"),
            source: e,
        })?;
        tracing::debug!(command = %shown, status = %out.status, "ran");
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(NetError::Command {
            command: shown,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    async fn ip(&self, args: &[&str]) -> Result<String, NetError> {
        self.run("ip", args, None).await
    }

    async fn nft(&self, script: &str) -> Result<String, NetError> {
        self.run("nft", &["-f", "-"], Some(script)).await
    }

    /// The pid of `bridge`'s dnsmasq if it is alive and really that one.
    fn dhcp_pid(&self, bridge: &str) -> Option<i32> {
        let dir = self.dhcp_root().join(bridge);
        let pid: i32 = std::fs::read_to_string(dir.join(files::PID))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let conf = dir.join(files::CONFIG);
        is_our_dnsmasq(pid, &conf).then_some(pid)
    }

    /// Stops `bridge`'s dnsmasq if it runs; waits until it is gone.
    async fn stop_process(&self, bridge: &str) -> Result<(), NetError> {
        let Some(pid) = self.dhcp_pid(bridge) else {
            return Ok(());
        };
        let conf = self.dhcp_root().join(bridge).join(files::CONFIG);
        signal(pid, Signal::SIGTERM)?;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while is_our_dnsmasq(pid, &conf) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(bridge, pid, "dnsmasq ignored SIGTERM; killing it");
                signal(pid, Signal::SIGKILL)?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The argv for `program args`, inside `netns` if given.
pub fn command_line(netns: Option<&str>, program: &str, args: &[&str]) -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    argv.push(program.to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// The script `nft -f -` gets to replace the table atomically.
pub fn nft_replace_script(nft: &NftPlan) -> String {
    format!(
        "{}{}{}{}",
        nft_delete_script(),
        nft.table,
        filter::add_lines(NFT_TABLE, &nft.elements),
        state_add_line(nft)
    )
}

/// Adds the `state` set's one element for the plan: its key is the state
/// itself ([`state_key`]), its comment says it for people and for
/// [`parse_nft_fingerprint`].
fn state_add_line(nft: &NftPlan) -> String {
    let state = nft.state();
    let key = state_key(&state).expect("a plan's state is two 64-bit fingerprints");
    format!(
        "add element ip {NFT_TABLE} state {{ {key} comment \"{NFT_COMMENT_PREFIX}{state}\" }}\n"
    )
}

/// The `state` set's key for `state` (`<16 hex>:<16 hex>`, see
/// [`NftPlan::state`]): the 128 bits as an IPv6 address, so a transaction
/// can name the state it expects by deleting its element (which fails,
/// and with it the whole transaction, when the table holds another).
pub fn state_key(state: &str) -> Option<String> {
    let (a, b) = state.split_once(':')?;
    let hex = format!("{a}{b}");
    let ok = a.len() == 16 && b.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| {
        hex.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).expect("ASCII"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// The script that brings the elements from `from` to the plan's,
/// atomically, if the table's state is `loaded`: it starts by deleting
/// `loaded`'s `state` element, so it changes nothing when the table holds
/// another state (a table from an older format, whose state has no such
/// key, gets its `state` set flushed instead).
pub fn nft_elements_script(loaded: &str, from: &Elements, nft: &NftPlan) -> String {
    let mut s = match state_key(loaded) {
        Some(key) => format!("delete element ip {NFT_TABLE} state {{ {key} }}\n"),
        None => format!("flush set ip {NFT_TABLE} state\n"),
    };
    s += &filter::delta_script(NFT_TABLE, from, &nft.elements).unwrap_or_default();
    s + &state_add_line(nft)
}

/// The elements of one set or map in `nft list` output, as written.
pub fn parse_nft_elements(listing: &str) -> Vec<String> {
    let Some(start) = listing.find("elements = {") else {
        return vec![];
    };
    let rest = &listing[start + "elements = {".len()..];
    let body = rest.split('}').next().unwrap_or_default();
    body.split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

/// Deletes the table whether or not it exists (`table {}` creates it empty
/// first, so the `delete` cannot fail).
pub fn nft_delete_script() -> String {
    format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")
}

/// The fingerprint in `nft list` output: the first comment with the
/// CC's prefix (the table's, or the `state` element's).
pub fn parse_nft_fingerprint(listing: &str) -> String {
    listing
        .split("comment \"")
        .skip(1)
        .find_map(|rest| rest.split('"').next())
        .and_then(|c| c.strip_prefix(NFT_COMMENT_PREFIX))
        .unwrap_or_default()
        .to_string()
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

/// Bridges from `ip -j addr show type bridge`.
pub fn parse_bridges(json: &str, prefix: &str) -> Result<Vec<BridgeState>, NetError> {
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let links: Vec<IpLink> = serde_json::from_str(json)
        .map_err(|e| NetError::Parse(format!("`ip -j addr` output: {e}")))?;
    Ok(links
        .into_iter()
        .filter(|l| l.ifname.starts_with(prefix))
        .map(|l| BridgeState {
            up: l.flags.iter().any(|f| f == "UP"),
            addresses: l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet")
                .filter_map(|a| Some(format!("{}/{}", a.local.as_ref()?, a.prefixlen?)))
                .collect(),
            name: l.ifname,
        })
        .collect())
}

/// Whether `pid` is a live dnsmasq started with `conf` (a pid file can
/// outlive its process, and pids are reused).
fn is_our_dnsmasq(pid: i32, conf: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line: it is gone for our purposes.
    let want = format!("--conf-file={}", conf.display());
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"dnsmasq")) && args.contains(&want.as_bytes())
}

fn signal(pid: i32, sig: Signal) -> Result<(), NetError> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(NetError::Io {
            what: format!("sending {sig} to dnsmasq {pid}"),
            source: e.into(),
        }),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// Creates `dir` readable by everyone (see the module docs).
fn make_dir(dir: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("setting the mode of {}", dir.display())))
}

/// Replaces `path` whole (write then rename), so dnsmasq never reads half.
fn write_file(path: &Path, text: &str) -> Result<(), NetError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
}

/// The host list a dnsmasq configuration names.
fn hosts_path(config: &str) -> Option<PathBuf> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("dhcp-hostsfile="))
        .map(PathBuf::from)
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[async_trait]
impl HostNet for LinuxHostNet {
    async fn bridges(&self, prefix: &str) -> Result<Vec<BridgeState>, NetError> {
        let json = self.ip(&["-j", "addr", "show", "type", "bridge"]).await?;
        parse_bridges(&json, prefix)
    }

    async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        self.ip(&["link", "add", name, "type", "bridge"]).await?;
        self.set_up(name).await
    }

    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        self.ip(&["link", "set", name, "up"]).await.map(drop)
    }

    async fn delete_bridge(&self, name: &str) -> Result<(), NetError> {
        self.ip(&["link", "del", name]).await.map(drop)
    }

    async fn add_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError> {
        self.ip(&["addr", "add", cidr, "dev", bridge])
            .await
            .map(drop)
    }

    async fn delete_address(&self, bridge: &str, cidr: &str) -> Result<(), NetError> {
        self.ip(&["addr", "del", cidr, "dev", bridge])
            .await
            .map(drop)
    }

    async fn dhcp_servers(&self) -> Result<Vec<DhcpState>, NetError> {
        let root = self.dhcp_root();
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(format!("listing {}", root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if !entry.path().is_dir() {
                continue;
            }
            let bridge = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            out.push(DhcpState {
                config: read_or_empty(&dir.join(files::CONFIG)),
                hosts: hosts_path(&read_or_empty(&dir.join(files::CONFIG)))
                    .map(|p| read_or_empty(&p))
                    .unwrap_or_default(),
                running: self.dhcp_pid(&bridge).is_some(),
                bridge,
            });
        }
        out.sort_by(|a, b| a.bridge.cmp(&b.bridge));
        Ok(out)
    }

    async fn start_dhcp(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError> {
        self.stop_process(bridge).await?;
        make_dir(&self.dhcp_root())?;
        make_dir(&dhcp.dir)?;
        let conf = dhcp.dir.join(files::CONFIG);
        write_file(&conf, &dhcp.config)?;
        if let Some(parent) = dhcp.hosts_path.parent() {
            make_dir(parent)?;
        }
        write_file(&dhcp.hosts_path, &dhcp.hosts)?;
        let _ = std::fs::remove_file(dhcp.dir.join(files::PID));
        let program = self.dnsmasq.display().to_string();
        let conf_arg = format!("--conf-file={}", conf.display());
        // dnsmasq forks into the background once it is bound and returns
        // non-zero (with the reason on stderr) if it cannot start.
        self.run(&program, &[&conf_arg], None).await?;
        Ok(())
    }

    async fn reload_dhcp_hosts(&self, bridge: &str, dhcp: &DhcpPlan) -> Result<(), NetError> {
        write_file(&dhcp.hosts_path, &dhcp.hosts)?;
        let pid = self.dhcp_pid(bridge).ok_or_else(|| NetError::Command {
            command: format!("reload dnsmasq on {bridge}"),
            message: "it is not running".into(),
        })?;
        signal(pid, Signal::SIGHUP)
    }

    async fn stop_dhcp(&self, bridge: &str) -> Result<(), NetError> {
        self.stop_process(bridge).await?;
        let dir = self.dhcp_root().join(bridge);
        if let Some(hosts) = hosts_path(&read_or_empty(&dir.join(files::CONFIG))) {
            let _ = std::fs::remove_file(hosts);
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    async fn nft_state(&self) -> Result<Option<String>, NetError> {
        match self
            .run("nft", &["list", "set", "ip", NFT_TABLE, "state"], None)
            .await
        {
            Ok(listing) => Ok(Some(parse_nft_fingerprint(&listing))),
            // No table, or one from before the `state` set existed.
            Err(NetError::Command { message, .. })
                if message.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn apply_nft(&self, nft: &NftPlan) -> Result<(), NetError> {
        let r = self.nft(&nft_replace_script(nft)).await;
        self.remember(r.is_ok().then_some(nft));
        r.map(drop)
    }

    async fn update_nft_elements(&self, loaded: &str, nft: &NftPlan) -> Result<(), NetError> {
        let known = self
            .nft_loaded()
            .filter(|(state, _)| state == loaded)
            .map(|(_, e)| e);
        let script = match &known {
            Some(old) => nft_elements_script(loaded, old, nft),
            // Not what this process loaded: the whole table again, one
            // transaction too, and twice as fast as flushing and refilling
            // thousands of sets.
            None => nft_replace_script(nft),
        };
        let r = self.nft(&script).await;
        // After a failure the table is unchanged, but not necessarily what
        // this process thought it was: the next change reads it.
        self.remember(r.is_ok().then_some(nft));
        r.map(drop)
    }

    fn nft_loaded(&self) -> Option<(String, Elements)> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn nat_map(&self) -> Result<std::collections::BTreeMap<String, String>, NetError> {
        match self
            .run("nft", &["list", "map", "ip", NFT_TABLE, "pub2priv"], None)
            .await
        {
            Ok(listing) => Ok(parse_nft_elements(&listing)
                .iter()
                .filter_map(|e| e.split_once(" : "))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()),
            Err(NetError::Command { message, .. })
                if message.contains("No such file or directory") =>
            {
                Ok(Default::default())
            }
            Err(e) => Err(e),
        }
    }

    async fn flush_conntrack(&self, ip: &str) -> Result<(), NetError> {
        // Flows addressed to it (inbound, DNATed) and flows whose replies
        // come back to it (outbound, SNATed). `conntrack` fails when it
        // deletes nothing, which is fine here.
        for flag in ["-d", "-q"] {
            match self.run("conntrack", &["-D", flag, ip], None).await {
                Ok(_) => {}
                Err(NetError::Command { message, .. }) if message.contains("0 flow entries") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn addresses(&self, iface: &str) -> Result<Vec<String>, NetError> {
        let json = self.ip(&["-j", "addr", "show", "dev", iface]).await?;
        Ok(parse_bridges(&json, "")?
            .into_iter()
            .flat_map(|b| b.addresses)
            .collect())
    }

    fn segnet(&self) -> &dyn ironbark_nc::segnet::SegNet {
        &self.segnet
    }

    async fn forwarding(&self) -> Result<bool, NetError> {
        // In our own namespace the file answers without a process (this is
        // on the path of every launch that makes a segment).
        let v = match self.netns {
            None => std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .map_err(io("reading /proc/sys/net/ipv4/ip_forward"))?,
            Some(_) => {
                self.run("sysctl", &["-n", "net.ipv4.ip_forward"], None)
                    .await?
            }
        };
        Ok(v.trim() == "1")
    }

    async fn enable_forwarding(&self) -> Result<(), NetError> {
        self.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)
            .await
            .map(drop)
    }

    async fn delete_nft(&self) -> Result<(), NetError> {
        self.remember(None);
        self.nft(&nft_delete_script()).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_inside_the_namespace_when_asked() {
        assert_eq!(command_line(None, "ip", &["link"]), ["ip", "link"]);
        assert_eq!(
            command_line(Some("ns1"), "nft", &["-f", "-"]),
            ["ip", "netns", "exec", "ns1", "nft", "-f", "-"]
        );
    }

    #[test]
    fn the_table_is_replaced_in_one_script() {
        let mut elements = Elements::new();
        let set = |e: &str| std::sync::Arc::new([e.to_string()].into());
        elements.insert("subnets".into(), set("10.0.0.0/28 . 0-255"));
        elements.insert("dst_group".into(), set("10.0.0.2 : jump g1"));
        let nft = NftPlan {
            table: "table ip ironbark {\n}\n".into(),
            fingerprint: "00000000000000ab".into(),
            elements,
            elements_fingerprint: "00000000000000cd".into(),
        };
        let add_state = "add element ip ironbark state { 0000:0000:0000:00ab:0000:0000:0000:00cd \
                         comment \"ironbark:00000000000000ab:00000000000000cd\" }\n";
        assert_eq!(
            nft_replace_script(&nft),
            format!(
                "table ip ironbark {{}}\ndelete table ip ironbark\ntable ip ironbark {{\n}}\n\
                 add element ip ironbark dst_group {{ 10.0.0.2 : jump g1 }}\n\
                 add element ip ironbark subnets {{ 10.0.0.0/28 . 0-255 }}\n\
                 {add_state}"
            )
        );
        let loaded = "00000000000000ab:0000000000000001";
        // Known: only the difference.
        let mut old = nft.elements.clone();
        old.insert("subnets".into(), set("10.0.0.16/28 . 0-255"));
        assert_eq!(
            nft_elements_script(loaded, &old, &nft),
            format!(
                "delete element ip ironbark state {{ 0000:0000:0000:00ab:0000:0000:0000:0001 }}\n\
                 delete element ip ironbark subnets {{ 10.0.0.16/28 . 0-255 }}\n\
                 add element ip ironbark subnets {{ 10.0.0.0/28 . 0-255 }}\n\
                 {add_state}"
            )
        );
        // A state in another format (an older table's) cannot be named.
        assert!(
            nft_elements_script("ab:cd", &old, &nft).starts_with("flush set ip ironbark state\n")
        );
        assert_eq!(state_key("ab:cd"), None);
    }

    #[test]
    fn set_elements_are_parsed_from_nft_list() {
        let listing = "table ip ironbark {\n\tmap pub2priv {\n\t\ttype ipv4_addr : ipv4_addr\n\t\telements = { 203.0.113.10 : 10.0.0.2,\n\t\t\t     203.0.113.11 : 10.0.0.3 }\n\t}\n}\n";
        assert_eq!(
            parse_nft_elements(listing),
            ["203.0.113.10 : 10.0.0.2", "203.0.113.11 : 10.0.0.3"]
        );
        assert!(parse_nft_elements("map x {\n}\n").is_empty());
        let state = "\tset state {\n\t\ttype mark\n\t\telements = { 0x00000000 comment \"ironbark:ab:cd\" }\n";
        assert_eq!(parse_nft_fingerprint(state), "ab:cd");
    }

    #[test]
    fn fingerprints_come_from_the_table_comment() {
        let listing = "table ip ironbark { # handle 3\n\tcomment \"ironbark:0123abcd\"\n\tchain prerouting {\n";
        assert_eq!(parse_nft_fingerprint(listing), "0123abcd");
        assert_eq!(parse_nft_fingerprint("table ip ironbark {\n}\n"), "");
    }

    #[test]
    fn bridges_are_parsed_from_ip_json() {
        let json = r#"[{"ifindex":3,"ifname":"ibr0","flags":["BROADCAST","MULTICAST","UP"],
            "addr_info":[{"family":"inet","local":"10.200.0.1","prefixlen":28},
                         {"family":"inet6","local":"fe80::1","prefixlen":64}]},
            {"ifindex":4,"ifname":"ibr1","flags":["BROADCAST","MULTICAST"],"addr_info":[]},
            {"ifindex":5,"ifname":"docker0","flags":["UP"],"addr_info":[]}]"#;
        assert_eq!(
            parse_bridges(json, "ibr").unwrap(),
            [
                BridgeState {
                    name: "ibr0".into(),
                    up: true,
                    addresses: vec!["10.200.0.1/28".into()],
                },
                BridgeState {
                    name: "ibr1".into(),
                    up: false,
                    addresses: vec![],
                },
            ]
        );
        assert_eq!(parse_bridges("", "ibr").unwrap(), []);
        assert!(parse_bridges("{", "ibr").is_err());
    }
}
