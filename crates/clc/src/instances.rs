//! Instances: RunInstances to BURIED.
//!
//! The CLC records every instance and decides its state; the zone's CC and
//! NCs only do what the desired state says and report what runs. A request
//! changes records in the store, then sends the CC the zone's whole desired
//! state ([`ZoneDesired`]): the CC reconciles networks and NCs to it, so a
//! lost message or a restart converges on the next send. Reports (pushed
//! as events, and polled as a safety net) come back through
//! [`Cloud::observe`], which is the only place states advance from what the
//! nodes say:
//!
//! ```text
//! pending --NC runs it--> running --Terminate--> shutting-down --NC: gone--> terminated --delay--> (erased)
//!    \______________ VM failed or vanished ______________________________/
//! ```
//!
//! Placement is decided here from the nodes' reported capacity less what
//! live instances already hold; a reservation that cannot fit its MinCount
//! starts nothing (`InsufficientInstanceCapacity`).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use ironbark_cluster_api::{
    IngressRule, InstanceDesired, InstanceMetadata, RuleProtocol, RuleSourceSpec, Segment,
    TerminateOutcome, ZoneDesired, ZoneReport,
};
use ironbark_node_api::{
    BootImage, ImageRef, InstanceSpec, NbdTarget, NicSpec, VmResources, VmState, VolumeAttachment,
};
use ironbark_types::*;

use crate::properties::{NODE_POLL, TERMINATED_TIME};
use crate::{Caller, Cloud};

/// The zone's CC, as the CLC drives it.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    async fn apply(&self, zone: ZoneDesired) -> Result<ZoneReport>;
    async fn report(&self) -> Result<ZoneReport>;
    async fn terminate(&self, id: &InstanceId) -> Result<TerminateOutcome>;
    async fn reboot(&self, id: &InstanceId) -> Result<()>;
    async fn console(&self, id: &InstanceId) -> Result<String>;
}

/// A zone with no CC attached: no nodes, so nothing can run.
pub struct NoCluster;

#[async_trait::async_trait]
impl Cluster for NoCluster {
    async fn apply(&self, zone: ZoneDesired) -> Result<ZoneReport> {
        Ok(ZoneReport {
            zone: String::new(),
            generation: zone.generation,
            nodes: vec![],
        })
    }
    async fn report(&self) -> Result<ZoneReport> {
        Ok(ZoneReport {
            zone: String::new(),
            generation: 0,
            nodes: vec![],
        })
    }
    async fn terminate(&self, _id: &InstanceId) -> Result<TerminateOutcome> {
        Ok(TerminateOutcome {
            broadcast: false,
            acknowledged_by: vec![],
            found_on: None,
        })
    }
    async fn reboot(&self, id: &InstanceId) -> Result<()> {
        Err(Error::new(
            ErrorKind::IncorrectInstanceState,
            format!("{id} has no node"),
        ))
    }
    async fn console(&self, _id: &InstanceId) -> Result<String> {
        Ok(String::new())
    }
}

/// What RunInstances asks for, as the client wrote it.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub image_id: String,
    pub min_count: u32,
    pub max_count: u32,
    pub instance_type: Option<String>,
    pub key_name: Option<String>,
    pub group_names: Vec<String>,
    pub group_ids: Vec<String>,
    pub user_data: Option<String>,
    pub zone: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
}

/// A state change TerminateInstances reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub id: InstanceId,
    pub previous: InstanceState,
    pub current: InstanceState,
}

const DEFAULT_TERMINATED_SECS: i64 = 600;
/// Machine images whose object ends so boot from kernel and ramdisk alone.
pub const MANIFEST_SUFFIX: &str = "manifest.json";

fn not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::InstanceNotFound,
        format!("The instance ID '{id}' does not exist"),
    )
}

fn mac_for(id: &InstanceId) -> String {
    // Eucalyptus' d0:0d prefix, then four bytes of the id: locally
    // administered, unicast, stable for the instance's life.
    let hex: Vec<char> = id.as_str()[2..].chars().collect();
    let b = |i: usize| {
        format!(
            "{}{}",
            hex.get(i).unwrap_or(&'0'),
            hex.get(i + 1).unwrap_or(&'0')
        )
    };
    format!("d0:0d:{}:{}:{}:{}", b(0), b(2), b(4), b(6))
}

/// A stored rule as the CC enforces it.
fn ingress_rule(r: &Rule) -> IngressRule {
    IngressRule {
        protocol: match r.protocol {
            Protocol::Tcp => RuleProtocol::Tcp,
            Protocol::Udp => RuleProtocol::Udp,
            Protocol::Icmp => RuleProtocol::Icmp,
            Protocol::All => RuleProtocol::All,
        },
        from_port: r.from_port,
        to_port: r.to_port,
        source: match &r.source {
            RuleSource::Cidr(c) => RuleSourceSpec::Cidr(c.to_string()),
            RuleSource::Group { group_id, .. } => RuleSourceSpec::Group(group_id.to_string()),
        },
    }
}

fn bridge_for(idx: u32) -> String {
    format!("ibr{idx}")
}

pub(crate) fn instance_filter(i: &Instance, tags: &[Tag], name: &str) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    let opt = |s: &Option<String>| Some(s.iter().cloned().collect::<Vec<_>>());
    match name {
        "instance-id" => one(i.id.as_str()),
        "reservation-id" => one(i.reservation_id.as_str()),
        "image-id" => one(i.image_id.as_str()),
        "instance-type" => one(&i.instance_type),
        "instance-state-name" => one(i.state.as_str()),
        "instance-state-code" => one(&i.state.code().to_string()),
        "key-name" => opt(&i.key_name),
        "private-ip-address" => one(&i.private_ip),
        "ip-address" => opt(&i.public_ip),
        "availability-zone" => one(&i.zone),
        "group-id" | "instance.group-id" => one(i.group_id.as_str()),
        "group-name" | "instance.group-name" => one(&i.group_name),
        "owner-id" => one(i.account_id.as_str()),
        "kernel-id" => Some(i.kernel_id.iter().map(|k| k.to_string()).collect()),
        "ramdisk-id" => Some(i.ramdisk_id.iter().map(|k| k.to_string()).collect()),
        "launch-index" => one(&i.launch_index.to_string()),
        "architecture" => one("x86_64"),
        "root-device-type" => one("instance-store"),
        _ => crate::tags::tag_filter(tags, name),
    }
}

impl Cloud {
    fn vm_type(&self, name: &str) -> Result<VmType> {
        self.config
            .vm_types
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| Error::invalid_value(format!("Invalid value '{name}' for InstanceType")))
    }

    /// Instances that still hold resources (everything not terminated).
    pub(crate) async fn live_instances(&self) -> Result<Vec<Instance>> {
        Ok(self
            .store
            .list_instances(None)
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .collect())
    }

    /// Free capacity per node: reported totals less what live instances hold.
    pub(crate) fn free_by_node(
        &self,
        report: &ZoneReport,
        live: &[Instance],
    ) -> Vec<(String, Capacity)> {
        let mut out = Vec::new();
        for n in &report.nodes {
            let Some(r) = n.report.as_ref().filter(|_| n.reachable) else {
                continue;
            };
            let mut free = Capacity {
                cpus: r.cpus,
                memory_mib: r.memory_mib,
                disk_gib: r.disk_gib,
            };
            for i in live.iter().filter(|i| i.node_id == n.node_id) {
                if let Ok(t) = self.vm_type(&i.instance_type) {
                    free.cpus = free.cpus.saturating_sub(t.cpus);
                    free.memory_mib = free.memory_mib.saturating_sub(u64::from(t.memory_mib));
                    free.disk_gib = free.disk_gib.saturating_sub(u64::from(t.disk_gib));
                }
            }
            out.push((n.node_id.clone(), free));
        }
        out
    }

    pub async fn run_instances(&self, caller: &Caller, req: RunRequest) -> Result<Vec<Instance>> {
        let _serial = self.run_lock.lock().await;
        let (min, max) = (
            req.min_count.max(1),
            req.max_count.max(req.min_count).max(1),
        );
        if req.min_count > req.max_count && req.max_count > 0 {
            return Err(Error::invalid_value(
                "MinCount must not be greater than MaxCount",
            ));
        }
        let image = self.launchable_image(caller, &req.image_id).await?;
        if image.id.kind() != ImageKind::Machine {
            return Err(Error::invalid_value(format!(
                "{} is not a machine image",
                image.id
            )));
        }
        let kernel = match req
            .kernel_id
            .as_deref()
            .or(image.kernel_id.as_ref().map(|k| k.as_str()))
        {
            Some(k) => Some(self.launchable_image(caller, k).await?),
            None => None,
        };
        let ramdisk = match req
            .ramdisk_id
            .as_deref()
            .or(image.ramdisk_id.as_ref().map(|k| k.as_str()))
        {
            Some(r) => Some(self.launchable_image(caller, r).await?),
            None => None,
        };
        let kernel = kernel.ok_or_else(|| {
            Error::invalid_value(format!("{} names no kernel and none was given", image.id))
        })?;
        let vm = self.vm_type(req.instance_type.as_deref().unwrap_or("m1.small"))?;
        if let Some(k) = &req.key_name {
            let keys = self.store.list_key_pairs(Some(&caller.account.id)).await?;
            if !keys.iter().any(|kp| kp.name == *k) {
                return Err(Error::new(
                    ErrorKind::KeyPairNotFound,
                    format!("The key pair '{k}' does not exist"),
                ));
            }
        }
        if req.group_names.len() + req.group_ids.len() > 1 {
            return Err(Error::new(
                ErrorKind::InvalidParameterCombination,
                "An instance belongs to exactly one security group here: each group is its own network segment",
            ));
        }
        let group = match (req.group_names.first(), req.group_ids.first()) {
            (Some(n), _) => {
                self.resolve_group(caller, &crate::GroupRef::Name(n.clone()))
                    .await?
            }
            (_, Some(id)) => {
                self.resolve_group(caller, &crate::GroupRef::Id(id.clone()))
                    .await?
            }
            _ => self.ensure_default_group(&caller.account.id).await?,
        };
        let zone = match &req.zone {
            Some(z) if !self.config.zones.contains(z) => {
                return Err(Error::invalid_value(format!(
                    "Invalid availability zone: [{z}]"
                )));
            }
            Some(z) => z.clone(),
            None => self.config.zones[0].clone(),
        };
        if let Some(ud) = &req.user_data
            && base64::engine::general_purpose::STANDARD
                .decode(ud.trim())
                .is_err()
        {
            return Err(Error::invalid_value("Invalid BASE64 encoding of user data"));
        }

        // Placement: as many as fit, at least MinCount.
        let report = self.cluster.report().await?;
        let live = self.live_instances().await?;
        let mut free = self.free_by_node(&report, &live);
        let mut nodes = Vec::new();
        while (nodes.len() as u32) < max {
            // Spread: the node with the most free memory that fits.
            let best = free
                .iter_mut()
                .filter(|(_, c)| c.fits(&vm) > 0)
                .max_by_key(|(_, c)| c.memory_mib);
            let Some((node, cap)) = best else { break };
            cap.cpus -= vm.cpus;
            cap.memory_mib -= u64::from(vm.memory_mib);
            cap.disk_gib -= u64::from(vm.disk_gib);
            nodes.push(node.clone());
        }
        if (nodes.len() as u32) < min {
            return Err(Error::new(
                ErrorKind::InsufficientInstanceCapacity,
                format!(
                    "Not enough capacity for {min} {} instance(s) in {zone}: {} would fit",
                    vm.name,
                    nodes.len()
                ),
            ));
        }

        // Addresses: the group's segment, lowest free host addresses.
        let seg = self
            .store
            .segment_of(&group.id, self.config.network.max_segments())
            .await?;
        let (_, _, hosts) = self.config.network.block(seg);
        let used: Vec<String> = live
            .iter()
            .filter(|i| i.group_id == group.id)
            .map(|i| i.private_ip.clone())
            .collect();
        let mut free_ips = hosts
            .into_iter()
            .map(|h| h.to_string())
            .filter(|h| !used.contains(h));
        let reservation = ReservationId::generate();
        let now = now_ms();
        let mut made = Vec::new();
        for (n, node) in nodes.into_iter().enumerate() {
            let ip = free_ips.next().ok_or_else(|| {
                Error::new(
                    ErrorKind::InsufficientInstanceCapacity,
                    format!(
                        "The segment of group {} has no free address (VNET_ADDRSPERNET)",
                        group.name
                    ),
                )
            })?;
            let id = InstanceId::generate();
            made.push(Instance {
                mac: mac_for(&id),
                id,
                reservation_id: reservation.clone(),
                account_id: caller.account.id.clone(),
                image_id: image.id.clone(),
                kernel_id: Some(kernel.id.clone()),
                ramdisk_id: ramdisk.as_ref().map(|r| r.id.clone()),
                instance_type: vm.name.clone(),
                key_name: req.key_name.clone(),
                group_id: group.id.clone(),
                group_name: group.name.clone(),
                user_data: req.user_data.clone().map(|u| u.trim().to_string()),
                zone: zone.clone(),
                node_id: node,
                private_ip: ip,
                public_ip: None,
                state: InstanceState::Pending,
                state_reason: None,
                launch_index: n as u32,
                launch_ms: now,
                terminated_ms: None,
            });
        }
        self.assign_public_ips(&live, &mut made).await?;
        self.store.insert_instances(&made).await?;
        tracing::info!(reservation = %reservation, count = made.len(), "instances launched");
        // The records are the truth from here; a failed send is retried by
        // the next reconcile.
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the zone's desired state failed; the reconcile loop retries");
        }
        Ok(made)
    }

    /// The zone's whole desired state, from the records.
    pub async fn desired_zone(&self) -> Result<ZoneDesired> {
        let live: Vec<Instance> = self
            .live_instances()
            .await?
            .into_iter()
            .filter(|i| i.state != InstanceState::ShuttingDown)
            .collect();
        let segs: HashMap<SecurityGroupId, u32> =
            self.store.segments().await?.into_iter().collect();
        let mut segments = Vec::new();
        let mut instances = Vec::new();
        let keys = self.store.list_key_pairs(None).await?;
        let groups: HashMap<SecurityGroupId, SecurityGroup> = self
            .store
            .list_groups(None)
            .await?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        let mut images: HashMap<ImageId, Image> = HashMap::new();
        let attached = self.store.list_volumes(None).await?;
        for i in &live {
            let Some(&idx) = segs.get(&i.group_id) else {
                continue;
            };
            if !segments
                .iter()
                .any(|s: &Segment| s.group_id == i.group_id.as_str())
            {
                let (cidr, gw, _) = self.config.network.block(idx);
                segments.push(Segment {
                    group_id: i.group_id.to_string(),
                    tag: self.config.network.tag_base + idx,
                    bridge: bridge_for(idx),
                    subnet: cidr.to_string(),
                    gateway: gw.to_string(),
                    rules: groups
                        .get(&i.group_id)
                        .map(|g| g.rules.iter().map(ingress_rule).collect())
                        .unwrap_or_default(),
                });
            }
            for id in [
                Some(&i.image_id),
                i.kernel_id.as_ref(),
                i.ramdisk_id.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if !images.contains_key(id)
                    && let Some(img) = self.store.image(id).await?
                {
                    images.insert(id.clone(), img);
                }
            }
            let image_ref = |id: &ImageId| images.get(id).cloned();
            let vm = self.vm_type(&i.instance_type)?;
            let mut refs = Vec::new();
            for id in [
                Some(&i.image_id),
                i.kernel_id.as_ref(),
                i.ramdisk_id.as_ref(),
            ] {
                refs.push(match id.and_then(image_ref) {
                    Some(img) => {
                        let (b, k) = img.location.split_once('/').unwrap_or((&img.location, ""));
                        Some(ImageRef {
                            id: img.id.to_string(),
                            url: self.objects.presign_get(b, k, 3600).await?,
                            sha256: img.sha256.clone(),
                            size: img.size,
                        })
                    }
                    None => None,
                });
            }
            let machine = images.get(&i.image_id);
            let root = if machine.is_some_and(|m| m.location.ends_with(MANIFEST_SUFFIX)) {
                None
            } else {
                refs[0].clone()
            };
            let Some(kernel) = refs[1].clone() else {
                tracing::warn!(instance = %i.id, "kernel image is gone; instance left out of the desired state");
                continue;
            };
            let idx = segs[&i.group_id];
            let key = i.key_name.as_ref().and_then(|n| {
                keys.iter()
                    .find(|k| k.account_id == i.account_id && k.name == *n)
                    .map(|k| (k.name.clone(), k.public_key.clone()))
            });
            instances.push(InstanceDesired {
                spec: InstanceSpec {
                    instance_id: i.id.to_string(),
                    account_id: i.account_id.to_string(),
                    vm: VmResources {
                        cpus: vm.cpus,
                        memory_mib: vm.memory_mib,
                        disk_gib: vm.disk_gib,
                    },
                    image: BootImage {
                        kernel,
                        ramdisk: refs[2].clone(),
                        root,
                        cmdline: String::new(),
                    },
                    nics: vec![NicSpec {
                        mac: i.mac.clone(),
                        bridge: bridge_for(idx),
                        tap: ironbark_node_api::tap_name(i.id.as_str()),
                    }],
                },
                node_id: i.node_id.clone(),
                group_id: i.group_id.to_string(),
                private_ip: i.private_ip.clone(),
                public_ip: i.public_ip.clone(),
                volumes: attached
                    .iter()
                    .filter_map(|v| {
                        let a = v.attachment.as_ref()?;
                        if a.instance_id != i.id || a.state == AttachState::Detaching {
                            return None;
                        }
                        let e = self.ready_export(&v.id, &i.node_id, &i.id)?;
                        Some(VolumeAttachment {
                            volume_id: v.id.to_string(),
                            device: a.device.clone(),
                            nbd: NbdTarget {
                                host: e.host,
                                port: e.port,
                                export: e.export,
                                tls_identity: e.tls_identity,
                                psk_hex: e.psk_hex,
                                socket: e.socket,
                            },
                        })
                    })
                    .collect(),
                metadata: InstanceMetadata {
                    ami_id: i.image_id.to_string(),
                    reservation_id: i.reservation_id.to_string(),
                    instance_type: i.instance_type.clone(),
                    hostname: format!("ip-{}", i.private_ip.replace('.', "-")),
                    local_ipv4: i.private_ip.clone(),
                    public_ipv4: i.public_ip.clone(),
                    availability_zone: i.zone.clone(),
                    security_groups: vec![i.group_name.clone()],
                    public_key: key,
                    user_data: i
                        .user_data
                        .as_ref()
                        .and_then(|u| base64::engine::general_purpose::STANDARD.decode(u).ok()),
                    kernel_id: i.kernel_id.as_ref().map(|k| k.to_string()),
                    ramdisk_id: i.ramdisk_id.as_ref().map(|k| k.to_string()),
                    block_device_mapping: vec![
                        ("ami".into(), "/dev/sda1".into()),
                        ("root".into(), "/dev/sda1".into()),
                        ("ephemeral0".into(), "sda2".into()),
                    ],
                },
            });
        }
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let node_poll_secs = self
            .store
            .property(NODE_POLL)
            .await?
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|s| (1..=3600).contains(s));
        Ok(ZoneDesired {
            generation,
            segments,
            instances,
            node_poll_secs,
        })
    }

    /// Sends the desired state and takes the report it answers with.
    pub async fn push_desired(&self) -> Result<()> {
        let zone = self.desired_zone().await?;
        let report = self.cluster.apply(zone).await?;
        self.observe(&report).await
    }

    /// Advances instance states from what the nodes report. Idempotent:
    /// the same report twice changes nothing the second time.
    pub async fn observe(&self, report: &ZoneReport) -> Result<()> {
        let mut seen: HashMap<&str, (&str, VmState, Option<&String>)> = HashMap::new();
        for (node, r) in report.instances() {
            seen.insert(r.instance_id.as_str(), (node, r.state, r.error.as_ref()));
        }
        let all_reachable = report.nodes.iter().all(|n| n.reachable);
        let now = now_ms();
        for i in self.live_instances().await? {
            use InstanceState::*;
            let here = seen.get(i.id.as_str());
            let (to, from, reason): (InstanceState, &[InstanceState], Option<String>) =
                match (i.state, here) {
                    (Pending, Some((_, VmState::Running, _))) => (Running, &[Pending], None),
                    (Pending | Running, Some((_, VmState::Failed, err))) => (
                        Terminated,
                        &[Pending, Running],
                        Some(format!(
                            "Server.InternalError: {}",
                            err.map(|s| s.as_str()).unwrap_or("the VM failed")
                        )),
                    ),
                    (Running, Some((_, VmState::Terminated, _))) | (Running, None)
                        if here.is_some() || (all_reachable && !report.nodes.is_empty()) =>
                    {
                        (
                            Terminated,
                            &[Running],
                            Some("Server.InternalError: the VM is gone".into()),
                        )
                    }
                    (ShuttingDown, Some((_, VmState::Terminated, _))) => (
                        Terminated,
                        &[ShuttingDown],
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into()),
                    ),
                    (ShuttingDown, None) if all_reachable => (
                        Terminated,
                        &[ShuttingDown],
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into()),
                    ),
                    _ => continue,
                };
            if self
                .store
                .transition_instance(&i.id, from, to, reason.as_deref(), now)
                .await?
                .is_some()
            {
                tracing::info!(instance = %i.id, from = i.state.as_str(), to = to.as_str(), "instance state");
            }
        }
        if self.observe_attachments(&report.node_volumes()).await? {
            // An attachment ended: its export closes now, not at the
            // SC's next periodic resend.
            self.push_storage_logged().await;
        }
        self.release_idle_segments().await
    }

    async fn release_idle_segments(&self) -> Result<()> {
        let live = self.live_instances().await?;
        for (g, _) in self.store.segments().await? {
            if !live.iter().any(|i| i.group_id == g) {
                self.store.release_segment(&g).await?;
            }
        }
        Ok(())
    }

    /// The safety-net pass: poll the CC, re-send the desired state, and
    /// bury records terminated longer than the configured delay.
    pub async fn reconcile(&self) -> Result<()> {
        self.repair_addresses().await?;
        self.push_desired().await?;
        let report = self.cluster.report().await?;
        self.observe(&report).await?;
        self.bury().await
    }

    pub async fn bury(&self) -> Result<()> {
        let delay = match self.store.property(TERMINATED_TIME).await? {
            Some(v) => v.trim().parse::<i64>().unwrap_or(DEFAULT_TERMINATED_SECS),
            None => DEFAULT_TERMINATED_SECS,
        };
        let now = now_ms();
        for i in self.store.list_instances(None).await? {
            if i.state == InstanceState::Terminated
                && i.terminated_ms.is_some_and(|t| now - t >= delay * 1000)
                && self.store.delete_instance(&i.id).await?
            {
                tracing::info!(instance = %i.id, "instance buried");
            }
        }
        Ok(())
    }

    /// The caller's instances by id (terminated ones included, since EC2
    /// answers for them until they are buried).
    async fn own_instances(&self, caller: &Caller, ids: &[String]) -> Result<Vec<Instance>> {
        let mine = self.store.list_instances(Some(&caller.account.id)).await?;
        let mut out = Vec::new();
        for id in ids {
            let iid = InstanceId::parse(id)?;
            match mine.iter().find(|i| i.id == iid) {
                Some(i) => out.push(i.clone()),
                None => return Err(not_found(id)),
            }
        }
        Ok(out)
    }

    pub async fn terminate_instances(
        &self,
        caller: &Caller,
        ids: &[String],
    ) -> Result<Vec<StateChange>> {
        if ids.is_empty() {
            return Err(Error::missing("InstanceId"));
        }
        let targets = self.own_instances(caller, ids).await?;
        let mut changes = Vec::new();
        let now = now_ms();
        for i in &targets {
            use InstanceState::*;
            let updated = self
                .store
                .transition_instance(&i.id, &[Pending, Running], ShuttingDown, None, now)
                .await?;
            changes.push(StateChange {
                id: i.id.clone(),
                previous: i.state,
                current: updated.map(|u| u.state).unwrap_or(i.state),
            });
        }
        // CLC -> CC -> NC, with the CC falling back to every NC; the
        // reports that follow move the records to terminated.
        for c in changes
            .iter()
            .filter(|c| c.current == InstanceState::ShuttingDown)
        {
            match self.cluster.terminate(&c.id).await {
                Ok(o) => {
                    tracing::info!(instance = %c.id, broadcast = o.broadcast, found_on = ?o.found_on, "terminate sent")
                }
                Err(e) => {
                    tracing::warn!(instance = %c.id, error = %e, "terminate not delivered; the reconcile loop retries")
                }
            }
        }
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the zone's desired state failed");
        }
        Ok(changes)
    }

    pub async fn reboot_instances(&self, caller: &Caller, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::missing("InstanceId"));
        }
        for i in self.own_instances(caller, ids).await? {
            if i.state == InstanceState::Running {
                self.cluster.reboot(&i.id).await?;
            }
        }
        Ok(())
    }

    pub async fn console_output(&self, caller: &Caller, id: &str) -> Result<(Instance, String)> {
        let i = self
            .own_instances(caller, &[id.to_string()])
            .await?
            .remove(0);
        let text = if i.state == InstanceState::Terminated {
            String::new()
        } else {
            self.cluster.console(&i.id).await.unwrap_or_default()
        };
        Ok((i, text))
    }

    /// DescribeInstances: the caller's instances, terminated ones hidden
    /// from their owner (EC2 shows them for a while; Eucalyptus' contract
    /// here is that they vanish); the administrator's `verbose` pseudo-id
    /// shows every account's, terminated included.
    pub async fn describe_instances(
        &self,
        caller: &Caller,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<(Instance, Vec<Tag>)>> {
        let verbose = caller.is_admin() && ids.iter().any(|i| i == "verbose");
        let ids: Vec<&String> = ids
            .iter()
            .filter(|i| !(verbose && *i == "verbose"))
            .collect();
        let scope = if verbose {
            None
        } else {
            Some(&caller.account.id)
        };
        let all: Vec<Instance> = self
            .store
            .list_instances(scope)
            .await?
            .into_iter()
            .filter(|i| verbose || i.state != InstanceState::Terminated)
            .collect();
        for id in &ids {
            InstanceId::parse(id)?;
            if !all.iter().any(|i| i.id.as_str() == id.as_str()) {
                return Err(not_found(id));
            }
        }
        let tags = self.tags_by_resource(scope).await?;
        let selected: Vec<(Instance, Vec<Tag>)> = all
            .into_iter()
            .filter(|i| ids.is_empty() || ids.iter().any(|x| x.as_str() == i.id.as_str()))
            .map(|i| {
                let t = tags.get(i.id.as_str()).cloned().unwrap_or_default();
                (i, t)
            })
            .collect();
        filter::apply(selected, filters, |(i, t), n| instance_filter(i, t, n))
    }

    /// The cluster as attached, for the binary's event endpoint and loops.
    pub fn cluster(&self) -> &Arc<dyn Cluster> {
        &self.cluster
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use ironbark_cluster_api::NodeStatus;
    use ironbark_node_api::{InstanceReport, NodeReport};

    use super::*;
    use crate::testutil::{caller, cloud};
    use crate::{LaunchPermissionChange, ObjectSource, RegisterImage};

    pub(crate) struct Objects;

    /// Upload ids [`Objects`] was told to abort (ids are unique per test).
    pub(crate) static ABORTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[async_trait::async_trait]
    impl ObjectSource for Objects {
        async fn digest(&self, _a: &AccountId, _b: &str, _k: &str) -> Result<(u64, String)> {
            Ok((1, "ab".repeat(32)))
        }
        async fn presign_get(&self, b: &str, k: &str, _s: u32) -> Result<String> {
            Ok(format!("http://walrus/{b}/{k}"))
        }
        async fn create_upload(&self, b: &str, k: &str) -> Result<String> {
            Ok(format!("up-{b}-{k}"))
        }
        async fn presign_upload(
            &self,
            b: &str,
            k: &str,
            u: &str,
            parts: u32,
            _s: u32,
        ) -> Result<(Vec<String>, String)> {
            Ok((
                (1..=parts)
                    .map(|n| format!("http://walrus/{b}/{k}?partNumber={n}&uploadId={u}"))
                    .collect(),
                format!("http://walrus/{b}/{k}?uploadId={u}"),
            ))
        }
        async fn abort_upload(&self, _b: &str, _k: &str, u: &str) -> Result<()> {
            ABORTED.lock().unwrap().push(u.to_string());
            Ok(())
        }
        async fn ensure_system_bucket(&self, _b: &str) -> Result<()> {
            Ok(())
        }
        /// Every object of the cloud's own is 7 bytes with this ETag.
        async fn system_head(&self, _b: &str, _k: &str) -> Result<Option<(u64, String)>> {
            Ok(Some((7, FAKE_ETAG.into())))
        }
    }

    /// The ETag of every object the fake Walrus holds (quoted, as S3
    /// answers it).
    pub(crate) const FAKE_ETAG: &str = "\"0123abcd-2\"";

    /// A fake CC over one fake node that runs whatever it is told at once.
    pub(crate) struct FakeCluster {
        cpus: u32,
        running: Mutex<Vec<(String, VmState)>>,
        terminated: Mutex<Vec<String>>,
        pub(crate) last: Mutex<Option<ZoneDesired>>,
    }

    impl FakeCluster {
        fn new(cpus: u32) -> Self {
            FakeCluster {
                cpus,
                running: Mutex::new(vec![]),
                terminated: Mutex::new(vec![]),
                last: Mutex::new(None),
            }
        }
        fn snapshot(&self) -> ZoneReport {
            let instances = self
                .running
                .lock()
                .unwrap()
                .iter()
                .map(|(id, st)| InstanceReport {
                    instance_id: id.clone(),
                    state: *st,
                    error: None,
                    started_ms: Some(1),
                })
                .collect();
            ZoneReport {
                zone: "zone1".into(),
                generation: 0,
                nodes: vec![NodeStatus {
                    node_id: "node-1".into(),
                    url: "http://nc".into(),
                    reachable: true,
                    last_seen_ms: Some(1),
                    report: Some(NodeReport {
                        node_id: "node-1".into(),
                        cpus: self.cpus,
                        memory_mib: 8192,
                        disk_gib: 100,
                        generation: 0,
                        instances,
                    }),
                    // The node plugs in every volume it is given at once.
                    volumes: Some(ironbark_node_api::VolumesReport {
                        node_id: "node-1".into(),
                        generation: 0,
                        attachments: self
                            .last
                            .lock()
                            .unwrap()
                            .iter()
                            .flat_map(|z| z.instances.iter())
                            .flat_map(|d| {
                                d.volumes
                                    .iter()
                                    .map(|v| ironbark_node_api::VolumeAttachReport {
                                        instance_id: d.spec.instance_id.clone(),
                                        volume_id: v.volume_id.clone(),
                                        device: v.device.clone(),
                                        state: ironbark_node_api::AttachState::Attached,
                                        error: None,
                                    })
                            })
                            .collect(),
                    }),
                }],
            }
        }
    }

    #[async_trait::async_trait]
    impl Cluster for FakeCluster {
        async fn apply(&self, zone: ZoneDesired) -> Result<ZoneReport> {
            {
                let mut r = self.running.lock().unwrap();
                for d in &zone.instances {
                    if !r.iter().any(|(id, _)| *id == d.spec.instance_id) {
                        r.push((d.spec.instance_id.clone(), VmState::Running));
                    }
                }
                // Not desired any more: the node terminates it.
                for (id, st) in r.iter_mut() {
                    if !zone.instances.iter().any(|d| d.spec.instance_id == *id) {
                        *st = VmState::Terminated;
                    }
                }
            }
            *self.last.lock().unwrap() = Some(zone);
            Ok(self.snapshot())
        }
        async fn report(&self) -> Result<ZoneReport> {
            Ok(self.snapshot())
        }
        async fn terminate(&self, id: &InstanceId) -> Result<TerminateOutcome> {
            self.terminated.lock().unwrap().push(id.to_string());
            Ok(TerminateOutcome {
                broadcast: false,
                acknowledged_by: vec!["node-1".into()],
                found_on: Some("node-1".into()),
            })
        }
        async fn reboot(&self, _id: &InstanceId) -> Result<()> {
            Ok(())
        }
        async fn console(&self, id: &InstanceId) -> Result<String> {
            Ok(format!("IRONBARK-READY instance-id={id}"))
        }
    }

    pub(crate) async fn setup(cpus: u32) -> (Cloud, Arc<FakeCluster>, Caller, Caller, String) {
        let fake = Arc::new(FakeCluster::new(cpus));
        let c = cloud()
            .await
            .with_objects(Arc::new(Objects))
            .with_cluster(fake.clone());
        c.ensure_admin_account().await.unwrap();
        let admin = Caller {
            account: c.account_named("eucalyptus").await.unwrap(),
            ..caller(&c, "x").await
        };
        let alice = caller(&c, "alice").await;
        let reg = |loc: &str, name: &str, kind, k: Option<String>| RegisterImage {
            location: loc.into(),
            name: name.into(),
            kind: Some(kind),
            kernel_id: k,
            ..Default::default()
        };
        let k = c
            .register_image(&admin, reg("b/k", "kern", ImageKind::Kernel, None))
            .await
            .unwrap();
        let m = c
            .register_image(
                &admin,
                reg(
                    "b/manifest.json",
                    "img",
                    ImageKind::Machine,
                    Some(k.to_string()),
                ),
            )
            .await
            .unwrap();
        let all = LaunchPermissionChange {
            add_all: true,
            ..Default::default()
        };
        c.modify_image_launch(&admin, k.as_str(), &all)
            .await
            .unwrap();
        c.modify_image_launch(&admin, m.as_str(), &all)
            .await
            .unwrap();
        (c, fake, admin, alice, m.to_string())
    }

    pub(crate) fn run(image: &str, min: u32, max: u32) -> RunRequest {
        RunRequest {
            image_id: image.into(),
            min_count: min,
            max_count: max,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn capacity_placement_and_addresses() {
        let (c, fake, _admin, alice, img) = setup(2).await;
        // m1.small is one cpu: two fit, three do not, and a refusal starts nothing.
        let e = c.run_instances(&alice, run(&img, 3, 3)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InsufficientInstanceCapacity);
        assert!(
            c.describe_instances(&alice, &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        let got = c.run_instances(&alice, run(&img, 1, 5)).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_ne!(got[0].private_ip, got[1].private_ip);
        assert!(got[0].mac.starts_with("d0:0d:"));
        // The desired state reached the cluster, kernel-boot image without a root disk.
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert_eq!(z.instances.len(), 2);
        assert!(z.instances[0].spec.image.root.is_none());
        assert_eq!(z.segments.len(), 1);
        assert_eq!(z.segments[0].gateway, "10.200.0.1");
        // The fake node runs them at once; the report advanced them.
        let d = c.describe_instances(&alice, &[], &[]).await.unwrap();
        assert!(d.iter().all(|(i, _)| i.state == InstanceState::Running));
        assert_eq!(
            c.run_instances(&alice, run(&img, 1, 1))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InsufficientInstanceCapacity
        );
        // One group only.
        let mut two = run(&img, 1, 1);
        two.group_names = vec!["default".into(), "other".into()];
        assert_eq!(
            c.run_instances(&alice, two).await.unwrap_err().kind,
            ErrorKind::InvalidParameterCombination
        );
        let mut bad = run(&img, 1, 1);
        bad.instance_type = Some("m9.huge".into());
        assert_eq!(
            c.run_instances(&alice, bad).await.unwrap_err().kind,
            ErrorKind::InvalidParameterValue
        );
    }

    #[tokio::test]
    async fn public_and_elastic_ips_follow_ec2_classic() {
        use crate::AddressRef;
        let (c, fake, admin, alice, img) = setup(8).await;
        let bob = caller(&c, "bob").await;
        let kind = |r: Result<Address>| r.unwrap_err().kind;
        let pub_of = |z: &ZoneDesired, id: &InstanceId| {
            z.instances
                .iter()
                .find(|d| d.spec.instance_id == id.as_str())
                .and_then(|d| d.public_ip.clone())
        };

        // Each instance gets a pool address at launch, in pool order.
        let got = c.run_instances(&alice, run(&img, 2, 2)).await.unwrap();
        let (a, b) = (got[0].id.clone(), got[1].id.clone());
        assert_eq!(got[0].public_ip.as_deref(), Some("203.0.113.1"));
        assert_eq!(got[1].public_ip.as_deref(), Some("203.0.113.2"));
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert_eq!(pub_of(&z, &a).as_deref(), Some("203.0.113.1"));

        // One address left: allocate it; the pool is then exhausted.
        let eip = c.allocate_address(&alice).await.unwrap();
        assert_eq!(eip.public_ip, "203.0.113.3");
        assert_eq!(
            kind(c.allocate_address(&bob).await),
            ErrorKind::InsufficientAddressCapacity
        );
        // Another account can neither see nor touch it.
        assert!(
            c.describe_addresses(&bob, &[], &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        let by_ip = AddressRef::PublicIp(eip.public_ip.clone());
        assert_eq!(
            kind(c.associate_address(&bob, &by_ip, a.as_str(), None).await),
            ErrorKind::AddressNotFound
        );
        assert_eq!(
            c.release_address(&bob, &by_ip).await.unwrap_err().kind,
            ErrorKind::AddressNotFound
        );
        // Nor can the owner point it at someone else's instance.
        let bobs = c.run_instances(&bob, run(&img, 1, 1)).await.unwrap();
        assert_eq!(bobs[0].public_ip, None, "the pool is exhausted");
        assert_eq!(
            kind(
                c.associate_address(&alice, &by_ip, bobs[0].id.as_str(), None)
                    .await
            ),
            ErrorKind::InstanceNotFound
        );

        // Associate: the elastic IP replaces a's pool address, which is
        // free again and goes to bob's instance at the next repair.
        let assoc = c
            .associate_address(&alice, &by_ip, a.as_str(), None)
            .await
            .unwrap();
        assert!(assoc.association_id.is_some());
        let rec = c.store.instance(&a).await.unwrap().unwrap();
        assert_eq!(rec.public_ip.as_deref(), Some("203.0.113.3"));
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert_eq!(pub_of(&z, &a).as_deref(), Some("203.0.113.3"));
        c.repair_addresses().await.unwrap();
        let bob_ip = c
            .store
            .instance(&bobs[0].id)
            .await
            .unwrap()
            .unwrap()
            .public_ip;
        assert_eq!(bob_ip.as_deref(), Some("203.0.113.1"));

        // Move it to b without AllowReassociation=false: a gets an address
        // back (its own was taken meanwhile, so none is free: it has none).
        assert_eq!(
            kind(
                c.associate_address(&alice, &by_ip, b.as_str(), Some(false))
                    .await
            ),
            ErrorKind::AddressAlreadyAssociated
        );
        c.associate_address(&alice, &by_ip, b.as_str(), None)
            .await
            .unwrap();
        let ips = |id: &InstanceId| {
            let c = &c;
            let id = id.clone();
            async move { c.store.instance(&id).await.unwrap().unwrap().public_ip }
        };
        assert_eq!(ips(&b).await.as_deref(), Some("203.0.113.3"));
        assert_eq!(
            ips(&a).await.as_deref(),
            Some("203.0.113.2"),
            "b's old address, now free"
        );
        let v = c.describe_addresses(&alice, &[], &[], &[]).await.unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].instance_id.as_ref(), Some(&b));

        // Disassociate: b has nothing free to go back to; releasing bob's
        // instance's address frees 203.0.113.1 for it.
        c.terminate_instances(&bob, &[bobs[0].id.to_string()])
            .await
            .unwrap();
        c.disassociate_address(&alice, Some("203.0.113.3"), None)
            .await
            .unwrap();
        assert_eq!(ips(&b).await.as_deref(), Some("203.0.113.1"));
        // The administrator sees the whole pool and who holds what.
        let all = c
            .describe_addresses(&admin, &["verbose".into()], &[], &[])
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert!(
            all.iter().any(|v| v.public_ip == "203.0.113.3"
                && v.holder.as_deref() == Some("available (alice)"))
        );

        // Release while associated: disassociates first, never dangles.
        c.associate_address(
            &alice,
            &AddressRef::AllocationId(eip.allocation_id.to_string()),
            a.as_str(),
            None,
        )
        .await
        .unwrap();
        c.release_address(&alice, &by_ip).await.unwrap();
        assert!(
            c.describe_addresses(&alice, &[], &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ips(&a).await.as_deref(),
            Some("203.0.113.2"),
            "its earlier address"
        );
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert!(
            z.instances
                .iter()
                .all(|d| d.public_ip.as_deref() != Some("203.0.113.3"))
        );
        assert_eq!(
            c.describe_addresses(&alice, &["203.0.113.3".into()], &[], &[])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::AddressNotFound
        );
        assert_eq!(
            c.release_address(
                &alice,
                &AddressRef::AllocationId("eipalloc-12345678".into())
            )
            .await
            .unwrap_err()
            .kind,
            ErrorKind::AllocationIdNotFound
        );
    }

    #[tokio::test]
    async fn a_new_segment_layout_is_refused_while_instances_live() {
        let (c, _fake, _admin, alice, img) = setup(4).await;
        c.check_network_layout().await.unwrap();
        let got = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap();
        let mut cfg = c.config.clone();
        cfg.network.subnet = "10.9.0.0/16".parse().unwrap();
        let moved = crate::Cloud::new(
            c.store.clone(),
            ironbark_keypair::SealKey::generate(),
            cfg,
            Arc::new(crate::NoCapacity),
        );
        let e = moved.check_network_layout().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterValue);
        assert!(e.message.contains("1 instance(s) run"), "{}", e.message);
        c.terminate_instances(&alice, &[got[0].id.to_string()])
            .await
            .unwrap();
        moved.check_network_layout().await.unwrap();
    }

    #[tokio::test]
    async fn verbose_zones_count_what_the_nodes_report_less_what_runs() {
        let (c, _fake, admin, alice, img) = setup(4).await;
        let small = |lines: Vec<crate::ZoneLine>| {
            lines
                .into_iter()
                .find(|l| l.zone_name == "|- m1.small")
                .unwrap()
                .state
        };
        let v = vec!["verbose".to_string()];
        // The node reports 4 cpus: four m1.small (1 cpu each) fit.
        let before = c
            .describe_availability_zones(&admin, &v, &[])
            .await
            .unwrap();
        assert_eq!(small(before), "0004 / 0004     1   256     5");
        c.run_instances(&alice, run(&img, 3, 3)).await.unwrap();
        let after = c
            .describe_availability_zones(&admin, &v, &[])
            .await
            .unwrap();
        assert_eq!(small(after), "0001 / 0004     1   256     5");
    }

    #[tokio::test]
    async fn rules_reach_the_zone_desired_state() {
        let (c, fake, _admin, alice, img) = setup(4).await;
        c.run_instances(&alice, run(&img, 1, 1)).await.unwrap();
        let spec = crate::PermissionSpec {
            protocol: Some("tcp".into()),
            from_port: Some("22".into()),
            to_port: Some("22".into()),
            cidrs: vec!["198.51.100.0/24".into()],
            groups: vec![],
        };
        c.authorize_ingress(
            &alice,
            &crate::GroupRef::Name("default".into()),
            std::slice::from_ref(&spec),
        )
        .await
        .unwrap();
        let ssh = IngressRule {
            protocol: RuleProtocol::Tcp,
            from_port: 22,
            to_port: 22,
            source: RuleSourceSpec::Cidr("198.51.100.0/24".into()),
        };
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert!(z.segments[0].rules.contains(&ssh));
        // The default group's own rules (members reach each other) come too.
        assert!(z.segments[0].rules.iter().any(
            |r| matches!(&r.source, RuleSourceSpec::Group(g) if *g == z.segments[0].group_id)
        ));
        c.revoke_ingress(&alice, &crate::GroupRef::Name("default".into()), &[spec])
            .await
            .unwrap();
        let z = fake.last.lock().unwrap().clone().unwrap();
        assert!(
            !z.segments[0].rules.contains(&ssh),
            "a revoke is sent at once"
        );
    }

    #[tokio::test]
    async fn terminate_reaches_terminated_hides_and_buries() {
        let (c, fake, admin, alice, img) = setup(4).await;
        let got = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap();
        let id = got[0].id.to_string();
        let ch = c
            .terminate_instances(&alice, std::slice::from_ref(&id))
            .await
            .unwrap();
        assert_eq!(ch[0].previous, InstanceState::Running);
        assert_eq!(ch[0].current, InstanceState::ShuttingDown);
        assert_eq!(
            fake.terminated.lock().unwrap().as_slice(),
            std::slice::from_ref(&id)
        );
        // The node's report (terminated) moved it on.
        let rec = c.store.instance(&got[0].id).await.unwrap().unwrap();
        assert_eq!(rec.state, InstanceState::Terminated);
        // The owner no longer lists it; the administrator still does.
        assert!(
            c.describe_instances(&alice, &[], &[])
                .await
                .unwrap()
                .is_empty()
        );
        let v = c
            .describe_instances(&admin, &["verbose".into()], &[])
            .await
            .unwrap();
        assert!(v.iter().any(|(i, _)| i.id == got[0].id));
        // Terminating again changes nothing and says so.
        let again = c
            .terminate_instances(&alice, std::slice::from_ref(&id))
            .await
            .unwrap();
        assert_eq!(again[0].current, InstanceState::Terminated);
        // Bury with a zero delay erases it.
        c.store.set_property(TERMINATED_TIME, "0").await.unwrap();
        c.bury().await.unwrap();
        assert!(c.store.instance(&got[0].id).await.unwrap().is_none());
        assert!(
            c.store.segments().await.unwrap().is_empty(),
            "the idle segment was released"
        );
        assert_eq!(
            c.terminate_instances(&alice, &["i-12345678".into()])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InstanceNotFound
        );
    }

    #[tokio::test]
    async fn segments_get_tags_from_the_operators_range_and_no_more() {
        let (mut c, _fake, _admin, alice, img) = setup(8).await;
        c.config.network.tag_base = 4000;
        c.config.network.tag_max = 4001;
        for g in ["b", "c"] {
            c.create_security_group(&alice, g, g).await.unwrap();
        }
        let in_group = |g: &str| RunRequest {
            group_names: vec![g.into()],
            ..run(&img, 1, 1)
        };
        c.run_instances(&alice, run(&img, 1, 1)).await.unwrap();
        c.run_instances(&alice, in_group("b")).await.unwrap();
        let err = c.run_instances(&alice, in_group("c")).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InsufficientInstanceCapacity);
        assert!(err.message.contains("VNET_TAGS"), "{}", err.message);
        assert_eq!(
            c.describe_instances(&alice, &[], &[]).await.unwrap().len(),
            2,
            "the refused launch started nothing"
        );
        let tags: Vec<u32> = c
            .desired_zone()
            .await
            .unwrap()
            .segments
            .iter()
            .map(|s| s.tag)
            .collect();
        assert_eq!(tags, [4000, 4001]);
    }

    #[tokio::test]
    async fn instances_take_tags_of_their_owner_only_until_they_are_buried() {
        let (c, _fake, _admin, alice, img) = setup(4).await;
        let bob = caller(&c, "bob").await;
        let got = c.run_instances(&alice, run(&img, 2, 2)).await.unwrap();
        let (a, b) = (got[0].id.to_string(), got[1].id.to_string());
        let tag = |k: &str, v: &str| vec![(k.to_string(), Some(v.to_string()))];
        c.create_tags(&alice, std::slice::from_ref(&a), &tag("Name", "web"))
            .await
            .unwrap();
        assert_eq!(
            c.create_tags(&bob, std::slice::from_ref(&a), &tag("Name", "mine"))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InstanceNotFound,
            "another account's instance is not there for bob"
        );
        assert_eq!(
            c.create_tags(&alice, &["i-0123456789abcdef0".into()], &tag("a", "b"))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::InstanceNotFound
        );
        let named = c
            .describe_instances(
                &alice,
                &[],
                &[Filter {
                    name: "tag:Name".into(),
                    values: vec!["web".into()],
                }],
            )
            .await
            .unwrap();
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].0.id.as_str(), a);
        assert_eq!(named[0].1[0].value, "web");
        assert!(
            c.describe_instances(&alice, std::slice::from_ref(&b), &[])
                .await
                .unwrap()[0]
                .1
                .is_empty()
        );
        // Terminated, then buried: its tags go with it.
        c.terminate_instances(&alice, std::slice::from_ref(&a))
            .await
            .unwrap();
        c.store.set_property(TERMINATED_TIME, "0").await.unwrap();
        c.bury().await.unwrap();
        assert!(
            c.describe_tags(&alice, &[])
                .await
                .unwrap()
                .iter()
                .all(|t| t.resource_id != a)
        );
    }

    #[tokio::test]
    async fn a_vanished_vm_is_terminated_by_the_safety_net() {
        let (c, fake, _admin, alice, img) = setup(4).await;
        let got = c.run_instances(&alice, run(&img, 1, 1)).await.unwrap();
        fake.running.lock().unwrap().clear();
        let report = fake.report().await.unwrap();
        c.observe(&report).await.unwrap();
        let rec = c.store.instance(&got[0].id).await.unwrap().unwrap();
        assert_eq!(rec.state, InstanceState::Terminated);
        assert!(rec.state_reason.unwrap().contains("gone"));
    }
}
