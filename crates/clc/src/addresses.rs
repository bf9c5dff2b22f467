//! Public IPs and elastic IPs.
//!
//! The operator's pool (`VNET_PUBLICIPS`) is the only source of public
//! addresses. Every instance gets a free one at launch ([`Instance::public_ip`];
//! these are not rows of their own), and gives it back when it reaches
//! `terminated`: an address is in use exactly while a live instance names
//! it or an account holds it as an elastic IP ([`Address`] rows).
//!
//! Elastic IPs follow EC2-Classic, as Eucalyptus did: AssociateAddress
//! replaces the instance's public IP with the elastic one and remembers the
//! old one ([`Address::restore_ip`]); DisassociateAddress gives it back (a
//! fresh pool address if someone took it meanwhile). Associating an address
//! that is already associated moves it, unless the caller said
//! `AllowReassociation=false`. ReleaseAddress disassociates first. Each
//! change is one store transaction over the address row and the public IPs
//! of the instances it touches, then the zone's desired state is resent so
//! the CC moves its NAT.
//!
//! All of it runs under the CLC's run lock, the same one RunInstances
//! takes to pick addresses, so two requests never hand out one address.
//! An association whose instance is no longer live counts as none
//! everywhere (the instance may reach `terminated` without the lock), and
//! the reconcile loop clears such rows and gives addresses to live
//! instances that launched while the pool was empty.

use std::collections::HashSet;

use ironbark_store::AddressChange;
use ironbark_types::*;

use crate::{Caller, Cloud};

/// Property recording the segment layout live instances were given.
pub const NETWORK_LAYOUT: &str = "cloud.network.layout";

/// How a request names an elastic IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressRef {
    PublicIp(String),
    AllocationId(String),
}

/// One line of DescribeAddresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressView {
    pub public_ip: String,
    pub allocation_id: Option<AllocationId>,
    pub instance_id: Option<InstanceId>,
    pub association_id: Option<AssociationId>,
    /// The administrator's `verbose` view only: who holds it, as
    /// Eucalyptus printed it (`nobody`, `available (<account>)`,
    /// `<instance> (<account>)`).
    pub holder: Option<String>,
}

/// `a` held by its account but associated with nothing.
fn unassociated(a: &Address) -> Address {
    Address {
        instance_id: None,
        association_id: None,
        restore_ip: None,
        ..a.clone()
    }
}

fn address_not_found(ip: &str) -> Error {
    Error::new(
        ErrorKind::AddressNotFound,
        format!("Address '{ip}' not found."),
    )
}

fn allocation_not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::AllocationIdNotFound,
        format!("The allocation ID '{id}' does not exist"),
    )
}

impl Cloud {
    /// Pool addresses that neither an account nor a live instance holds,
    /// in pool order.
    fn free_public_ips(&self, live: &[Instance], held: &[Address]) -> Vec<String> {
        let used: HashSet<&str> = live
            .iter()
            .filter_map(|i| i.public_ip.as_deref())
            .chain(held.iter().map(|a| a.public_ip.as_str()))
            .collect();
        self.config
            .network
            .public_ips
            .iter()
            .map(|ip| ip.to_string())
            .filter(|ip| !used.contains(ip.as_str()))
            .collect()
    }

    /// Gives each new instance a free pool address (none when the pool is
    /// exhausted: the instance still runs, reachable privately). Called by
    /// RunInstances under the run lock, before the records are written.
    pub(crate) async fn assign_public_ips(
        &self,
        live: &[Instance],
        new: &mut [Instance],
    ) -> Result<()> {
        let held = self.store.list_addresses(None).await?;
        let mut free = self.free_public_ips(live, &held).into_iter();
        for i in new {
            i.public_ip = free.next();
        }
        Ok(())
    }

    /// The live instance an address is associated with, if any.
    fn associated<'a>(a: &Address, live: &'a [Instance]) -> Option<&'a Instance> {
        let id = a.instance_id.as_ref()?;
        live.iter().find(|i| &i.id == id)
    }

    /// The caller's elastic IP named by `which`.
    fn find_own<'a>(
        caller: &Caller,
        held: &'a [Address],
        which: &AddressRef,
    ) -> Result<&'a Address> {
        let mine = |a: &&Address| a.account_id == caller.account.id;
        match which {
            AddressRef::PublicIp(ip) => held
                .iter()
                .filter(mine)
                .find(|a| a.public_ip == *ip)
                .ok_or_else(|| address_not_found(ip)),
            AddressRef::AllocationId(id) => {
                AllocationId::parse(id)?;
                held.iter()
                    .filter(mine)
                    .find(|a| a.allocation_id.as_str() == id)
                    .ok_or_else(|| allocation_not_found(id))
            }
        }
    }

    /// What `a`'s instance gets when `a` is taken off it: the address it
    /// had before, or a fresh one, or none when the pool is exhausted
    /// (addresses `change` already hands out do not count as free).
    fn give_back(
        &self,
        a: &Address,
        live: &[Instance],
        held: &[Address],
        change: &mut AddressChange,
    ) {
        let Some(i) = Self::associated(a, live) else {
            return;
        };
        let taken: HashSet<&str> = change
            .instance_ips
            .iter()
            .filter_map(|(_, ip)| ip.as_deref())
            .collect();
        let free: Vec<String> = self
            .free_public_ips(live, held)
            .into_iter()
            .filter(|ip| !taken.contains(ip.as_str()))
            .collect();
        let back = a
            .restore_ip
            .clone()
            .filter(|r| free.contains(r))
            .or_else(|| free.first().cloned());
        change.instance_ips.push((i.id.clone(), back));
    }

    /// AllocateAddress: the lowest free pool address, held by the caller.
    pub async fn allocate_address(&self, caller: &Caller) -> Result<Address> {
        let _serial = self.run_lock.lock().await;
        let live = self.live_instances().await?;
        let held = self.store.list_addresses(None).await?;
        let Some(ip) = self.free_public_ips(&live, &held).into_iter().next() else {
            return Err(Error::new(
                ErrorKind::InsufficientAddressCapacity,
                "There are no free public addresses in the pool (VNET_PUBLICIPS)",
            ));
        };
        let a = Address {
            public_ip: ip,
            allocation_id: AllocationId::generate(),
            account_id: caller.account.id.clone(),
            instance_id: None,
            association_id: None,
            restore_ip: None,
            allocated_ms: now_ms(),
        };
        self.store.insert_address(&a).await?;
        tracing::info!(address = %a.public_ip, account = %caller.account.name, "address allocated");
        Ok(a)
    }

    /// ReleaseAddress: disassociates first (EC2-Classic), then gives the
    /// address back to the pool.
    pub async fn release_address(&self, caller: &Caller, which: &AddressRef) -> Result<()> {
        {
            let _serial = self.run_lock.lock().await;
            let live = self.live_instances().await?;
            let held = self.store.list_addresses(None).await?;
            let a = Self::find_own(caller, &held, which)?;
            let mut change = AddressChange::default();
            if Self::associated(a, &live).is_some() {
                // The row goes, so the instance may take back an address
                // only once this one is free: compute with it removed.
                let rest: Vec<Address> = held
                    .iter()
                    .filter(|h| h.public_ip != a.public_ip)
                    .cloned()
                    .collect();
                self.give_back(a, &live, &rest, &mut change);
            }
            change.delete.push(a.public_ip.clone());
            self.store.write_addresses(&change).await?;
            tracing::info!(address = %a.public_ip, "address released");
        }
        self.push_after_change().await;
        Ok(())
    }

    /// AssociateAddress: the address replaces the instance's public IP.
    pub async fn associate_address(
        &self,
        caller: &Caller,
        which: &AddressRef,
        instance: &str,
        allow_reassociation: Option<bool>,
    ) -> Result<Address> {
        let iid = InstanceId::parse(instance)?;
        let row = {
            let _serial = self.run_lock.lock().await;
            let live = self.live_instances().await?;
            let held = self.store.list_addresses(None).await?;
            let a = Self::find_own(caller, &held, which)?;
            let target = live
                .iter()
                .find(|i| i.id == iid && i.account_id == caller.account.id)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InstanceNotFound,
                        format!("The instance ID '{instance}' does not exist"),
                    )
                })?;
            if !matches!(
                target.state,
                InstanceState::Pending | InstanceState::Running
            ) {
                return Err(Error::new(
                    ErrorKind::IncorrectInstanceState,
                    format!(
                        "The instance '{instance}' is not in a state from which it can be associated ({})",
                        target.state.as_str()
                    ),
                ));
            }
            if let Some(now) = Self::associated(a, &live) {
                if now.id == iid {
                    return Ok(a.clone());
                }
                if allow_reassociation == Some(false) {
                    return Err(Error::new(
                        ErrorKind::AddressAlreadyAssociated,
                        format!(
                            "The address {} is already associated with {}",
                            a.public_ip, now.id
                        ),
                    ));
                }
            }
            let mut change = AddressChange::default();
            // Off its current instance, which gets its own address back,
            // or any free one: the target's pool address counts as free,
            // since the target is about to give it up.
            if Self::associated(a, &live).is_some() {
                let after: Vec<Instance> = live
                    .iter()
                    .cloned()
                    .map(|mut i| {
                        if i.id == iid {
                            i.public_ip = None;
                        }
                        i
                    })
                    .collect();
                self.give_back(a, &after, &held, &mut change);
            }
            // The target's current elastic IP (if any) is displaced; the
            // address it had before that one is what it gets back later.
            let mut restore = target.public_ip.clone();
            if let Some(old) = held
                .iter()
                .find(|h| h.public_ip != a.public_ip && h.instance_id.as_ref() == Some(&iid))
            {
                restore = old.restore_ip.clone();
                change.update.push(unassociated(old));
            }
            let mut row = a.clone();
            row.instance_id = Some(iid.clone());
            row.association_id = Some(AssociationId::generate());
            row.restore_ip = restore;
            change.update.push(row.clone());
            change
                .instance_ips
                .push((iid.clone(), Some(row.public_ip.clone())));
            self.store.write_addresses(&change).await?;
            tracing::info!(address = %row.public_ip, instance = %iid, "address associated");
            row
        };
        self.push_after_change().await;
        Ok(row)
    }

    /// DisassociateAddress: the instance gets back the public IP it had
    /// before (a fresh one if that was taken). An address that is not
    /// associated is left as it is, as EC2-Classic did.
    pub async fn disassociate_address(
        &self,
        caller: &Caller,
        public_ip: Option<&str>,
        association_id: Option<&str>,
    ) -> Result<()> {
        {
            let _serial = self.run_lock.lock().await;
            let live = self.live_instances().await?;
            let held = self.store.list_addresses(None).await?;
            let a = match (public_ip, association_id) {
                (Some(ip), _) => {
                    Self::find_own(caller, &held, &AddressRef::PublicIp(ip.to_string()))?
                }
                (None, Some(id)) => {
                    AssociationId::parse(id)?;
                    held.iter()
                        .find(|a| {
                            a.account_id == caller.account.id
                                && a.association_id.as_ref().map(|x| x.as_str()) == Some(id)
                                && Self::associated(a, &live).is_some()
                        })
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::AssociationIdNotFound,
                                format!("The association ID '{id}' does not exist"),
                            )
                        })?
                }
                (None, None) => return Err(Error::missing("PublicIp")),
            };
            if a.instance_id.is_none() {
                return Ok(());
            }
            let mut change = AddressChange::default();
            self.give_back(a, &live, &held, &mut change);
            change.update.push(unassociated(a));
            self.store.write_addresses(&change).await?;
            tracing::info!(address = %a.public_ip, "address disassociated");
        }
        self.push_after_change().await;
        Ok(())
    }

    /// DescribeAddresses: the caller's elastic IPs; the administrator's
    /// `verbose` pseudo-address lists the whole pool and who holds what.
    pub async fn describe_addresses(
        &self,
        caller: &Caller,
        public_ips: &[String],
        allocation_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<AddressView>> {
        let verbose = caller.is_admin() && public_ips.iter().any(|i| i == "verbose");
        let public_ips: Vec<&String> = public_ips.iter().filter(|i| *i != "verbose").collect();
        let live = self.live_instances().await?;
        let held = self.store.list_addresses(None).await?;
        let accounts = if verbose {
            self.store.list_accounts().await?
        } else {
            Vec::new()
        };
        let name_of = |id: &AccountId| {
            accounts
                .iter()
                .find(|a| a.id == *id)
                .map(|a| a.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let mut views = Vec::new();
        for a in &held {
            if !verbose && a.account_id != caller.account.id {
                continue;
            }
            let inst = Self::associated(a, &live);
            views.push(AddressView {
                public_ip: a.public_ip.clone(),
                allocation_id: Some(a.allocation_id.clone()),
                instance_id: inst.map(|i| i.id.clone()),
                association_id: inst.and(a.association_id.clone()),
                holder: verbose.then(|| match inst {
                    Some(i) => format!("{} ({})", i.id, name_of(&a.account_id)),
                    None => format!("available ({})", name_of(&a.account_id)),
                }),
            });
        }
        if verbose {
            for ip in &self.config.network.public_ips {
                let ip = ip.to_string();
                if held.iter().any(|a| a.public_ip == ip) {
                    continue;
                }
                let inst = live.iter().find(|i| i.public_ip.as_deref() == Some(&ip));
                views.push(AddressView {
                    instance_id: inst.map(|i| i.id.clone()),
                    holder: Some(match inst {
                        Some(i) => format!("{} ({})", i.id, name_of(&i.account_id)),
                        None => "nobody".into(),
                    }),
                    public_ip: ip,
                    allocation_id: None,
                    association_id: None,
                });
            }
        }
        for ip in &public_ips {
            if !views.iter().any(|v| v.public_ip == **ip) {
                return Err(address_not_found(ip));
            }
        }
        for id in allocation_ids {
            AllocationId::parse(id)?;
            if !views
                .iter()
                .any(|v| v.allocation_id.as_ref().map(|x| x.as_str()) == Some(id.as_str()))
            {
                return Err(allocation_not_found(id));
            }
        }
        let selected: Vec<AddressView> = views
            .into_iter()
            .filter(|v| public_ips.is_empty() || public_ips.iter().any(|ip| **ip == v.public_ip))
            .filter(|v| {
                allocation_ids.is_empty()
                    || allocation_ids
                        .iter()
                        .any(|id| v.allocation_id.as_ref().map(|x| x.as_str()) == Some(id))
            })
            .collect();
        filter::apply(selected, filters, |v, name| {
            let one = |s: &str| Some(vec![s.to_string()]);
            let opt = |s: Option<&str>| Some(s.map(|x| vec![x.to_string()]).unwrap_or_default());
            match name {
                "public-ip" => one(&v.public_ip),
                "domain" => one("standard"),
                "instance-id" => opt(v.instance_id.as_ref().map(|x| x.as_str())),
                "allocation-id" => opt(v.allocation_id.as_ref().map(|x| x.as_str())),
                "association-id" => opt(v.association_id.as_ref().map(|x| x.as_str())),
                _ => None,
            }
        })
    }

    /// The reconcile loop's repair: clears associations whose instance is
    /// gone and gives pool addresses to live instances that have none.
    pub async fn repair_addresses(&self) -> Result<()> {
        let _serial = self.run_lock.lock().await;
        let live = self.live_instances().await?;
        let held = self.store.list_addresses(None).await?;
        let mut change = AddressChange::default();
        for a in &held {
            if a.instance_id.is_some() && Self::associated(a, &live).is_none() {
                change.update.push(unassociated(a));
            }
        }
        let mut free = self.free_public_ips(&live, &held).into_iter();
        for i in live.iter().filter(|i| i.public_ip.is_none()) {
            match free.next() {
                Some(ip) => change.instance_ips.push((i.id.clone(), Some(ip))),
                None => break,
            }
        }
        if change != AddressChange::default() {
            self.store.write_addresses(&change).await?;
            tracing::info!(
                cleared = change.update.len(),
                assigned = change.instance_ips.len(),
                "addresses repaired"
            );
        }
        Ok(())
    }

    /// Refuses a changed segment layout (VNET_SUBNET, VNET_NETMASK,
    /// VNET_ADDRSPERNET, tags) while instances live: their addresses,
    /// bridges and tags were cut from the old one. With none live, the new
    /// layout is recorded and used. The public pool may change at any time:
    /// addresses already handed out stay valid until given back.
    pub async fn check_network_layout(&self) -> Result<()> {
        let n = &self.config.network;
        let mut want = format!(
            "subnet={} addrs_per_net={} tag_base={}",
            n.subnet, n.addrs_per_net, n.tag_base
        );
        // Only when set: a cloud recorded before VNET_TAGS existed keeps
        // its layout string and starts with its instances.
        if n.tag_max != crate::MAX_VNI {
            want.push_str(&format!(" tag_max={}", n.tag_max));
        }
        let had = self.store.property(NETWORK_LAYOUT).await?;
        if had.as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        let live = self.live_instances().await?;
        if let (Some(had), false) = (&had, live.is_empty()) {
            return Err(Error::invalid_value(format!(
                "The network layout changed ({had} -> {want}) while {} instance(s) run; \
                 terminate them (or restore the old VNET_* settings) before changing it",
                live.len()
            )));
        }
        self.store.set_property(NETWORK_LAYOUT, &want).await
    }

    /// Sends the new desired state; a failure is repaired by the loop.
    async fn push_after_change(&self) {
        if let Err(e) = self.push_desired().await {
            tracing::warn!(error = %e, "sending the zone's desired state failed; the reconcile loop retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::cloud;

    #[tokio::test]
    async fn layout_changes_only_without_live_instances() {
        let c = cloud().await;
        c.check_network_layout().await.unwrap();
        c.check_network_layout().await.unwrap();
        // Recorded; a different layout with nothing live is accepted.
        let mut cfg = c.config.clone();
        cfg.network.addrs_per_net = 64;
        let c2 = crate::Cloud::new(
            c.store.clone(),
            ironbark_keypair::SealKey::generate(),
            cfg,
            std::sync::Arc::new(crate::NoCapacity),
        );
        c2.check_network_layout().await.unwrap();
        assert!(
            c.store
                .property(super::NETWORK_LAYOUT)
                .await
                .unwrap()
                .unwrap()
                .contains("addrs_per_net=64")
        );
    }
}
