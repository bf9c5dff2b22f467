//! `ironbark`: one binary, a subcommand per role.
//!
//! `up` runs the whole cloud on this host with embedded defaults: the CLC
//! with its EC2 API, Walrus, one CC and one NC, talking over loopback HTTP.
//! `clc`, `cc` and `nc` run one role each, for clouds spread over several
//! hosts; they read the same configuration file and share the cluster token
//! (`DIR/keys/cluster.token`, made by the CLC, copied to the other hosts).
//! `admin` manages accounts, keys and properties directly in a data dir,
//! with or without the cloud running.

mod admin_files;
mod config;
mod host;
mod objectstorage;
mod roles;
mod server;
mod walrus;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ironbark_clc::{Cloud, CloudConfig, NoCapacity};
use ironbark_types::ACCOUNT_ADMIN_USER;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "ironbark",
    version,
    about = "A private IaaS cloud speaking the EC2 and S3 APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role of the cloud on this host.
    Up(ServeArgs),
    /// Run the cloud controller (EC2 API, accounts, cloud state) and Walrus;
    /// it drives the CC at CC_URL.
    Clc(ServeArgs),
    /// Run a cluster controller: the zone's networks, DHCP, metadata, and
    /// the NCs listed in NODES.
    Cc(RoleArgs),
    /// Run a node controller: the QEMU instances the CC asks for.
    Nc(RoleArgs),
    /// Run a storage controller: the zone's EBS volumes and snapshots.
    Sc(RoleArgs),
    /// Guest images for testing the cloud.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage accounts, users, access keys and properties in a data dir.
    Admin {
        #[arg(long, default_value = "/var/lib/ironbark")]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Where all state lives.
    #[arg(long, default_value = "/var/lib/ironbark")]
    data_dir: PathBuf,
    /// Address of the cloud's API port.
    #[arg(long, default_value = "127.0.0.1:8773")]
    listen: SocketAddr,
    /// Operator configuration (eucalyptus.conf style KEY="value" lines).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Walrus' own S3 port (default: the API address with port + 7, i.e. 8780).
    #[arg(long)]
    walrus_listen: Option<SocketAddr>,
}

#[derive(Args)]
struct RoleArgs {
    /// Where this role's state lives (the cluster token is read from
    /// DIR/keys/cluster.token unless CLUSTER_TOKEN_FILE says otherwise).
    #[arg(long, default_value = "/var/lib/ironbark")]
    data_dir: PathBuf,
    /// The role's control API address (CC: 0.0.0.0:8774, NC: 0.0.0.0:8775).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Operator configuration (eucalyptus.conf style KEY="value" lines).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the small test guest (Debian kernel, busybox, dropbear) from
    /// Debian packages: writes OUT/vmlinuz and OUT/initrd.img.
    BuildTest {
        #[arg(long)]
        out: PathBuf,
        /// Where downloaded packages are kept between builds.
        #[arg(long, default_value = "/var/cache/ironbark/debs")]
        cache: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminImageCmd {
    /// Upload a kernel and ramdisk to Walrus and register them as eki-/eri-
    /// and a bootable emi- (printed on the last line).
    Import {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        ramdisk: PathBuf,
        #[arg(long)]
        name: String,
        /// Keep the images to the administrator account (default: public).
        #[arg(long)]
        private: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    #[command(subcommand)]
    Image(AdminImageCmd),
    #[command(subcommand)]
    Account(AccountCmd),
    #[command(subcommand)]
    User(UserCmd),
    #[command(subcommand, name = "access-key")]
    AccessKey(AccessKeyCmd),
    #[command(subcommand)]
    Property(PropertyCmd),
    #[command(subcommand)]
    Cc(CcAdminCmd),
}

#[derive(Subcommand)]
enum CcAdminCmd {
    /// Remove every bridge, DHCP server, lease, rule and public address the
    /// CC owns and build them again from the CLC's desired state (after a
    /// VNET_* change, with no instances running).
    CleanRestart {
        /// The CC's control API (`ironbark up` runs it on its port + 1).
        #[arg(long, default_value = "http://127.0.0.1:8774")]
        cc_url: String,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account with its admin user and a first access key.
    Create {
        name: String,
    },
    List,
    /// Delete an account and everything it owns.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    Create {
        #[arg(long)]
        account: String,
        name: String,
    },
    List {
        #[arg(long)]
        account: String,
    },
}

#[derive(Subcommand)]
enum AccessKeyCmd {
    /// Issue a key, or import an existing id/secret pair with --id/--secret.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = ACCOUNT_ADMIN_USER)]
        user: String,
        #[arg(long, requires = "secret")]
        id: Option<String>,
        #[arg(long, requires = "id")]
        secret: Option<String>,
    },
    Delete {
        id: String,
    },
    List {
        #[arg(long)]
        account: String,
    },
}

#[derive(Subcommand)]
enum PropertyCmd {
    List,
    Set { name: String, value: String },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironbark: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Up(a) => serve(a, true).await,
        Command::Clc(a) => serve(a, false).await,
        Command::Cc(a) => serve_cc(a).await,
        Command::Nc(a) => serve_nc(a).await,
        Command::Sc(a) => serve_sc(a).await,
        Command::Image(ImageCmd::BuildTest { out, cache }) => {
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
            let built = ironbark_testimage::build_test_image(&out, &cache)?;
            println!("{}", built.kernel.display());
            println!("{}", built.initrd.display());
            Ok(())
        }
        Command::Admin { data_dir, command } => {
            admin(data_dir, command).await.map_err(|e| e.to_string())
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<config::ConfigFile, String> {
    let file = match path {
        Some(p) => config::ConfigFile::load(p)?,
        None => config::ConfigFile::default(),
    };
    for k in file.unknown_keys() {
        tracing::warn!(key = k, "configuration key not used by this version");
    }
    Ok(file)
}

/// The cluster token of a CC or NC host: made by the CLC, never here (a
/// token made up on this host would match nobody's).
fn role_token(file: &config::ConfigFile, data_dir: &std::path::Path) -> Result<String, String> {
    let path = file
        .get("CLUSTER_TOKEN_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("keys").join("cluster.token"));
    let t = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "reading the cluster token {}: {e} (copy it from the CLC host's DIR/keys/cluster.token)",
            path.display()
        )
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(t)
}

fn nc_accel(file: &config::ConfigFile) -> Result<ironbark_nc::AccelMode, String> {
    file.get("NC_ACCEL")
        .unwrap_or("auto")
        .parse::<ironbark_nc::AccelMode>()
        .map_err(|e| format!("NC_ACCEL: {e}"))
}

/// `ironbark nc`: one node controller.
async fn serve_nc(a: RoleArgs) -> Result<(), String> {
    let file = load_config(a.config.as_deref())?;
    let token = role_token(&file, &a.data_dir)?;
    let listen = a
        .listen
        .unwrap_or_else(|| SocketAddr::new([0, 0, 0, 0].into(), ironbark_node_api::DEFAULT_PORT));
    let node_id = file
        .get("NC_ID")
        .map(str::to_string)
        .unwrap_or_else(|| format!("nc-{}", listen.port()));
    roles::start_nc(
        &a.data_dir,
        listen,
        &token,
        roles::NcSettings {
            node_id,
            accel: nc_accel(&file)?,
            cc_url: file.get("CC_URL").map(str::to_string),
            underlay_interface: file.get("VNET_PRIVINTERFACE").map(String::from),
        },
    )
    .await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// NODES: the NCs a CC drives, as `id=url` or a bare URL (its id is then
/// `nc-<port>`, what `ironbark nc` calls itself by default).
fn parse_nodes(v: &str) -> Result<Vec<(String, String)>, String> {
    v.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (id, url) = match t.split_once('=') {
                Some((id, url)) => (id.to_string(), url.to_string()),
                None => {
                    let port = t
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                        .unwrap_or(ironbark_node_api::DEFAULT_PORT);
                    (format!("nc-{port}"), t.to_string())
                }
            };
            let url = if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            };
            if id.is_empty() || url.len() <= "http://".len() {
                return Err(format!("NODES: bad entry '{t}'"));
            }
            Ok((id, url))
        })
        .collect()
}

/// SC_NBD_HOST: the address the SC's NBD exports listen on and NCs dial
/// (default 127.0.0.1, right when the NCs share the SC's host).
fn nbd_host(file: &config::ConfigFile) -> Option<String> {
    file.get("SC_NBD_HOST").map(str::to_string)
}

/// SC_LOCAL_NODES: the NCs on the SC's host, which get Unix-socket exports.
fn sc_local_nodes(file: &config::ConfigFile) -> Vec<String> {
    file.get("SC_LOCAL_NODES")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `ironbark sc`: one storage controller.
async fn serve_sc(a: RoleArgs) -> Result<(), String> {
    let file = load_config(a.config.as_deref())?;
    let token = role_token(&file, &a.data_dir)?;
    let listen = a
        .listen
        .unwrap_or_else(|| SocketAddr::new([0, 0, 0, 0].into(), ironbark_sc_api::DEFAULT_PORT));
    let mut sc = ironbark_sc::ScSettings::new(a.data_dir.join("sc"), &token, listen);
    sc.local_nodes = sc_local_nodes(&file);
    if let Some(h) = nbd_host(&file) {
        sc.nbd_listen_host = h.clone();
        sc.nbd_advertise_host = h;
    }
    ironbark_sc::start(&sc)
        .await
        .map_err(|e| format!("starting the SC: {e}"))?;
    std::future::pending::<()>().await;
    Ok(())
}

/// `ironbark cc`: one cluster controller.
async fn serve_cc(a: RoleArgs) -> Result<(), String> {
    let file = load_config(a.config.as_deref())?;
    let token = role_token(&file, &a.data_dir)?;
    let zone = file
        .get("CC_ZONE")
        .map(str::to_string)
        .or_else(|| {
            file.get("ZONES")
                .and_then(|z| z.split(',').next())
                .map(|z| z.trim().to_string())
        })
        .unwrap_or_else(|| "zone1".to_string());
    let mut cc_cfg = ironbark_cc::CcConfig::new(zone, &token, a.data_dir.join("cc"));
    if let Some(l) = a.listen {
        cc_cfg.listen = l;
    }
    cc_cfg.nodes = parse_nodes(file.get("NODES").unwrap_or(""))?;
    if cc_cfg.nodes.is_empty() {
        tracing::warn!("NODES lists no node controller: instances cannot run in this zone");
    }
    cc_cfg.clc_callback_url = file
        .get("CLC_URL")
        .map(|u| format!("{}{}", u.trim_end_matches('/'), server::ZONE_REPORT_PATH));
    let network = network_config(&file)?;
    cc_cfg.dns_servers = vec![network.dns.clone()];
    cc_network(&mut cc_cfg, &file, &network)?;
    roles::start_cc(cc_cfg).await?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve(a: ServeArgs, all_roles: bool) -> Result<(), String> {
    let file = load_config(a.config.as_deref())?;
    let host = if a.listen.ip().is_unspecified() {
        format!("127.0.0.1:{}", a.listen.port())
    } else {
        a.listen.to_string()
    };
    let base = file
        .get("CLC_URL")
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{host}"));
    let mut cfg = CloudConfig::new(&a.data_dir, format!("{base}/"));
    if let Some(r) = file.get("REGION") {
        cfg.region = r.to_string();
    }
    if let Some(z) = file.get("ZONES") {
        cfg.zones = z
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if cfg.zones.is_empty() {
            return Err("ZONES names no zone".into());
        }
    }
    std::fs::create_dir_all(&a.data_dir)
        .map_err(|e| format!("creating {}: {e}", a.data_dir.display()))?;
    let capacity = Arc::new(host::HostCapacity::measure(&a.data_dir));
    let region = cfg.region.clone();
    let walrus_addr = a
        .walrus_listen
        .unwrap_or_else(|| SocketAddr::new(a.listen.ip(), a.listen.port().wrapping_add(7)));
    let walrus_host = if walrus_addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", walrus_addr.port())
    } else {
        walrus_addr.to_string()
    };
    let walrus_url = file
        .get("WALRUS_URL")
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{walrus_host}"));
    cfg.network = network_config(&file)?;
    let token = roles::cluster_token(&a.data_dir)?;
    let ports = roles::Ports::around(a.listen);
    let loopback = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", addr.port())
        } else {
            format!("http://{addr}")
        }
    };
    let sc_url = match file.get("SC_URL") {
        Some(u) if !all_roles => u.trim_end_matches('/').to_string(),
        _ => loopback(ports.sc),
    };
    let cc_url = match file.get("CC_URL") {
        Some(u) if !all_roles => u.trim_end_matches('/').to_string(),
        _ => loopback(ports.cc),
    };
    let nc_url = loopback(ports.nc);
    let node_id = "nc-1".to_string();
    let objects = Arc::new(walrus::WalrusObjects::new(&walrus_url, &region));
    let cloud = Cloud::open(cfg, capacity)
        .await
        .map_err(|e| e.to_string())?
        .with_objects(objects.clone())
        .with_cluster(Arc::new(roles::HttpCluster(
            ironbark_cc::ClusterClient::new(&cc_url, &token).map_err(|e| e.to_string())?,
        )))
        .with_storage(Arc::new(roles::HttpStorage(ironbark_sc::ScClient::new(
            &sc_url, &token,
        ))));
    let endpoints = admin_files::Endpoints {
        ec2: format!("{base}/"),
        s3: format!("{walrus_url}/"),
        region: region.clone(),
    };
    admin_files::ensure(&cloud, &a.data_dir, &endpoints)
        .await
        .map_err(|e| e.to_string())?;
    cloud
        .check_network_layout()
        .await
        .map_err(|e| e.to_string())?;
    let cloud = Arc::new(cloud);

    let split = |k: &str| -> Vec<String> {
        file.get(k)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut locations = split("WALRUS_LOCATIONS");
    if locations.is_empty() {
        locations.push(region.clone());
    }
    let walrus_cfg = ironbark_walrus::WalrusConfig {
        data_dir: a.data_dir.join("walrus"),
        region,
        locations,
        domains: split("WALRUS_DOMAINS"),
    };
    let identities = Arc::new(walrus::CloudIdentities(cloud.clone()));
    let walrus = ironbark_walrus::Walrus::open(walrus_cfg, identities).await?;
    objects.attach(walrus.clone(), &cloud);
    let front = walrus.clone();
    let s3_service = walrus.service()?;
    let walrus_listener = tokio::net::TcpListener::bind(walrus_addr)
        .await
        .map_err(|e| format!("listening on {walrus_addr}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", a.listen))?;
    tokio::spawn(walrus::serve(front, s3_service.clone(), walrus_listener));

    // The zone's CC, SC and this host's NC, over loopback HTTP as across
    // hosts.
    if all_roles {
        let mut sc = ironbark_sc::ScSettings::new(a.data_dir.join("sc"), &token, ports.sc);
        sc.nbd_ports = ports.nbd;
        // This host's NC shares the SC's filesystem: its volumes go over a
        // Unix socket. NCs that join from other hosts keep TCP + TLS.
        sc.local_nodes = vec![node_id.clone()];
        if let Some(h) = nbd_host(&file) {
            sc.nbd_listen_host = h.clone();
            sc.nbd_advertise_host = h;
        }
        ironbark_sc::start(&sc)
            .await
            .map_err(|e| format!("starting the SC: {e}"))?;
        roles::start_nc(
            &a.data_dir,
            ports.nc,
            &token,
            roles::NcSettings {
                node_id: node_id.clone(),
                accel: nc_accel(&file)?,
                cc_url: Some(cc_url.clone()),
                underlay_interface: file.get("VNET_PRIVINTERFACE").map(String::from),
            },
        )
        .await?;
        let mut cc_cfg = ironbark_cc::CcConfig::new(
            cloud.config().zones[0].clone(),
            &token,
            a.data_dir.join("cc"),
        );
        cc_cfg.listen = ports.cc;
        cc_cfg.metadata_listen = ports.metadata;
        cc_cfg.nodes = vec![(node_id, nc_url)];
        cc_cfg.clc_callback_url = Some(format!("{base}{}", server::ZONE_REPORT_PATH));
        cc_cfg.dns_servers = vec![cloud.config().network.dns.clone()];
        cc_network(&mut cc_cfg, &file, &cloud.config().network)?;
        roles::start_cc(cc_cfg).await?;
    }
    roles::spawn_clc_loop(cloud.clone());

    let app = server::App {
        cloud,
        s3: Some(s3_service),
        token,
    };
    server::serve(app, listener)
        .await
        .map_err(|e| e.to_string())
}

/// The CC's side of the network configuration: VNET_PUBINTERFACE and the
/// pool (it holds instances' public addresses there and owns the pool's
/// `/32`s on it), and VNET_PRIVINTERFACE with its address, the underlay
/// NCs on other hosts tunnel to.
fn cc_network(
    cc: &mut ironbark_cc::CcConfig,
    file: &config::ConfigFile,
    network: &ironbark_clc::NetworkConfig,
) -> Result<(), String> {
    cc.public_interface = file.get("VNET_PUBINTERFACE").map(str::to_string);
    if let Some(dev) = file.get("VNET_PRIVINTERFACE") {
        cc.private_interface = Some(dev.to_string());
        cc.private_ip = Some(roles::interface_ipv4(dev)?);
        cc.private_mtu = Some(roles::interface_mtu(dev)?);
    }
    // Runs of consecutive addresses, so the CC's ownership test stays short.
    let mut ranges: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> = Vec::new();
    for ip in &network.public_ips {
        match ranges.last_mut() {
            Some((_, last)) if u32::from(*last).checked_add(1) == Some(u32::from(*ip)) => {
                *last = *ip
            }
            _ => ranges.push((*ip, *ip)),
        }
    }
    cc.public_ips = ranges;
    Ok(())
}

/// VNET_SUBNET, VNET_NETMASK, VNET_ADDRSPERNET, VNET_DNS, VNET_PUBLICIPS, as
/// eucalyptus.conf spelled them.
fn network_config(file: &config::ConfigFile) -> Result<ironbark_clc::NetworkConfig, String> {
    let mut n = ironbark_clc::NetworkConfig::default();
    if let Some(subnet) = file.get("VNET_SUBNET") {
        let mask = file.get("VNET_NETMASK").unwrap_or("255.255.0.0");
        let mask: std::net::Ipv4Addr = mask
            .parse()
            .map_err(|_| format!("VNET_NETMASK: bad mask {mask}"))?;
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(format!("VNET_NETMASK: {mask} is not a netmask"));
        }
        let prefix = bits.leading_ones() as u8;
        n.subnet = format!("{subnet}/{prefix}")
            .parse()
            .map_err(|e: ironbark_types::Error| format!("VNET_SUBNET: {}", e.message))?;
    }
    if let Some(v) = file.get("VNET_ADDRSPERNET") {
        let k: u32 = v
            .parse()
            .map_err(|_| format!("VNET_ADDRSPERNET: not a number: {v}"))?;
        if !k.is_power_of_two() || !(8..=65536).contains(&k) {
            return Err(format!(
                "VNET_ADDRSPERNET: {k} must be a power of two from 8 to 65536"
            ));
        }
        n.addrs_per_net = k;
    }
    if let Some(d) = file.get("VNET_DNS") {
        n.dns = d.to_string();
    }
    if let Some(v) = file.get("VNET_PUBLICIPS") {
        n.public_ips = config::parse_public_ips(v).map_err(|e| format!("VNET_PUBLICIPS: {e}"))?;
    }
    if let Some(v) = file.get("VNET_TAGS") {
        (n.tag_base, n.tag_max) = config::parse_tags(v).map_err(|e| format!("VNET_TAGS: {e}"))?;
    }
    Ok(n)
}

/// Bucket the admin tool imports images into.
const IMAGE_BUCKET: &str = "ironbark-images";

/// Uploads kernel and ramdisk into Walrus directly (beside a running
/// cloud, or without one) and registers eki-, eri- and emi-. The emi's
/// object is a small manifest naming the two: it boots with no root disk.
async fn image_import(
    cloud: Cloud,
    data_dir: &std::path::Path,
    kernel: &std::path::Path,
    ramdisk: &std::path::Path,
    name: &str,
    public: bool,
) -> ironbark_types::Result<Vec<String>> {
    use ironbark_clc::{Caller, LaunchPermissionChange, RegisterImage};
    use ironbark_types::{ADMIN_ACCOUNT, Error, ImageKind};
    // The `emi-`'s name is checked before anything is uploaded or
    // registered, so a bad one leaves nothing behind.
    ironbark_clc::check_image_name(name)?;
    let objects = Arc::new(walrus::WalrusObjects::new(
        "http://127.0.0.1/",
        "eucalyptus",
    ));
    let cloud = Arc::new(cloud.with_objects(objects.clone()));
    let w = ironbark_walrus::Walrus::open_shared(
        ironbark_walrus::WalrusConfig {
            data_dir: data_dir.join("walrus"),
            region: cloud.config().region.clone(),
            locations: vec![],
            domains: vec![],
        },
        Arc::new(walrus::CloudIdentities(cloud.clone())),
    )
    .await
    .map_err(Error::internal)?;
    objects.attach(w.clone(), &cloud);
    let admin = cloud.account_named(ADMIN_ACCOUNT).await?;
    let (key_id, _) = cloud.system_credentials().await?;
    let caller = Caller {
        account: admin.clone(),
        user_name: ironbark_types::ACCOUNT_ADMIN_USER.into(),
        access_key_id: key_id,
    };
    let upload = |key: String, path: std::path::PathBuf| {
        let w = w.clone();
        let admin = admin.clone();
        async move {
            w.put_local_file(admin.id.as_str(), &admin.name, IMAGE_BUCKET, &key, &path)
                .await
                .map_err(Error::internal)
        }
    };
    upload(format!("{name}/vmlinuz"), kernel.to_path_buf()).await?;
    upload(format!("{name}/initrd.img"), ramdisk.to_path_buf()).await?;
    let reg = |loc: String, n: String, kind, k: Option<String>, r: Option<String>| RegisterImage {
        location: loc,
        name: n,
        description: Some(format!(
            "imported by ironbark admin from {}",
            kernel.display()
        )),
        kernel_id: k,
        ramdisk_id: r,
        architecture: None,
        kind: Some(kind),
    };
    let eki = cloud
        .register_image(
            &caller,
            reg(
                format!("{IMAGE_BUCKET}/{name}/vmlinuz"),
                format!("{name}-kernel"),
                ImageKind::Kernel,
                None,
                None,
            ),
        )
        .await?;
    let eri = cloud
        .register_image(
            &caller,
            reg(
                format!("{IMAGE_BUCKET}/{name}/initrd.img"),
                format!("{name}-ramdisk"),
                ImageKind::Ramdisk,
                None,
                None,
            ),
        )
        .await?;
    let manifest = serde_json::json!({
        "ironbark-manifest": 1,
        "boot": "kernel+ramdisk",
        "kernel": eki.as_str(),
        "ramdisk": eri.as_str(),
    });
    let tmp = std::env::temp_dir().join(format!("ironbark-manifest-{}.json", std::process::id()));
    std::fs::write(&tmp, manifest.to_string()).map_err(Error::internal)?;
    let put = upload(format!("{name}/{MANIFEST_SUFFIX}"), tmp.clone()).await;
    let _ = std::fs::remove_file(&tmp);
    put?;
    let emi = cloud
        .register_image(
            &caller,
            reg(
                format!("{IMAGE_BUCKET}/{name}/{MANIFEST_SUFFIX}"),
                name.to_string(),
                ImageKind::Machine,
                Some(eki.to_string()),
                Some(eri.to_string()),
            ),
        )
        .await?;
    if public {
        let all = LaunchPermissionChange {
            add_all: true,
            ..Default::default()
        };
        for id in [&eki, &eri, &emi] {
            cloud
                .modify_image_launch(&caller, id.as_str(), &all)
                .await?;
        }
    }
    Ok(vec![eki.to_string(), eri.to_string(), emi.to_string()])
}

/// Machine images whose object ends so are manifests of a kernel+ramdisk
/// boot, with no root disk.
const MANIFEST_SUFFIX: &str = "manifest.json";

fn print(v: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&v).expect("JSON values serialise")
    );
}

fn creds_json(c: &ironbark_clc::NewCredentials) -> serde_json::Value {
    json!({
        "account_id": c.account_id.as_str(),
        "account_name": c.account_name,
        "user_name": c.user_name,
        "access_key_id": c.access_key_id.as_str(),
        "secret_access_key": c.secret_access_key,
    })
}

async fn admin(data_dir: PathBuf, cmd: AdminCommand) -> ironbark_types::Result<()> {
    if !ironbark_clc::state_db_path(&data_dir).exists() {
        return Err(ironbark_types::Error::internal(format!(
            "no cloud state in {} (start the cloud there first with `ironbark up --data-dir {0}`)",
            data_dir.display()
        )));
    }
    // The endpoint is not needed for administration; the data dir is.
    let cloud = Cloud::open(CloudConfig::new(&data_dir, ""), Arc::new(NoCapacity)).await?;
    match cmd {
        AdminCommand::Cc(CcAdminCmd::CleanRestart { cc_url }) => {
            let fail = |e: String| ironbark_types::Error::internal(e);
            let token = role_token(&config::ConfigFile::default(), &data_dir).map_err(fail)?;
            let client = ironbark_cc::ClusterClient::new(&cc_url, &token)
                .map_err(|e| fail(e.to_string()))?;
            let changes = client
                .rebuild_network()
                .await
                .map_err(|e| fail(format!("clean restart via {cc_url}: {e}")))?;
            print(json!({ "changes": changes }));
        }
        AdminCommand::Image(AdminImageCmd::Import {
            kernel,
            ramdisk,
            name,
            private,
        }) => {
            let ids = image_import(cloud, &data_dir, &kernel, &ramdisk, &name, !private).await?;
            for id in ids {
                println!("{id}");
            }
        }
        AdminCommand::Account(AccountCmd::Create { name }) => {
            print(creds_json(&cloud.create_account(&name).await?));
        }
        AdminCommand::Account(AccountCmd::List) => {
            let list: Vec<_> = cloud
                .list_accounts()
                .await?
                .into_iter()
                .map(|a| json!({"account_id": a.id.as_str(), "account_name": a.name}))
                .collect();
            print(json!(list));
        }
        AdminCommand::Account(AccountCmd::Delete { name }) => {
            cloud.delete_account(&name).await?;
            print(json!({"deleted": name}));
        }
        AdminCommand::User(UserCmd::Create { account, name }) => {
            let u = cloud.create_user(&account, &name).await?;
            print(json!({"account_id": u.account_id.as_str(), "user_name": u.name}));
        }
        AdminCommand::User(UserCmd::List { account }) => {
            let a = cloud.account_named(&account).await?;
            let users: Vec<_> = cloud
                .store()
                .list_users(&a.id)
                .await?
                .into_iter()
                .map(|u| json!({"user_name": u.name}))
                .collect();
            print(json!(users));
        }
        AdminCommand::AccessKey(AccessKeyCmd::Create {
            account,
            user,
            id,
            secret,
        }) => {
            let import = id.as_deref().zip(secret.as_deref());
            print(creds_json(
                &cloud.create_access_key(&account, &user, import).await?,
            ));
        }
        AdminCommand::AccessKey(AccessKeyCmd::Delete { id }) => {
            cloud.delete_access_key(&id).await?;
            print(json!({"deleted": id}));
        }
        AdminCommand::AccessKey(AccessKeyCmd::List { account }) => {
            let keys: Vec<_> = cloud
                .list_access_keys(&account)
                .await?
                .into_iter()
                .map(|k| {
                    json!({
                        "access_key_id": k.access_key_id.as_str(),
                        "user_name": k.user_name,
                        "status": if k.active { "Active" } else { "Inactive" },
                        "created": ironbark_types::iso8601_ms(k.created_ms),
                    })
                })
                .collect();
            print(json!(keys));
        }
        AdminCommand::Property(PropertyCmd::List) => {
            let props: serde_json::Map<String, serde_json::Value> = cloud
                .store()
                .list_properties()
                .await?
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect();
            print(json!(props));
        }
        AdminCommand::Property(PropertyCmd::Set { name, value }) => {
            ironbark_clc::check_property(&name, &value)?;
            cloud.store().set_property(&name, &value).await?;
            print(json!({name: value}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_nodes;

    #[test]
    fn nodes_by_id_or_bare_address() {
        assert_eq!(
            parse_nodes("nc-a=http://10.0.0.2:8775  10.0.0.3:9000,http://h:8775/").unwrap(),
            vec![
                ("nc-a".to_string(), "http://10.0.0.2:8775".to_string()),
                ("nc-9000".to_string(), "http://10.0.0.3:9000".to_string()),
                ("nc-8775".to_string(), "http://h:8775/".to_string()),
            ]
        );
        assert!(parse_nodes("").unwrap().is_empty());
        assert!(parse_nodes("=http://x:1").is_err());
    }
}
