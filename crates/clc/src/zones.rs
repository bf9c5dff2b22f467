//! Regions and availability zones. One region per cloud; zones are the
//! clusters (CC+SC pairs). The administrator's `verbose` zone view is the
//! Eucalyptus capacity table: free and total instances per VM type.

use ironbark_types::*;

use crate::{Caller, Cloud};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub name: String,
    pub endpoint: String,
}

/// One `item` of DescribeAvailabilityZones. In the verbose view Eucalyptus
/// puts the capacity table in extra items whose "name" is a table row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneLine {
    pub zone_name: String,
    pub state: String,
    pub region: String,
    pub messages: Vec<String>,
}

impl Cloud {
    pub fn describe_regions(
        &self,
        names: &[String],
        filters: &[Filter],
    ) -> Result<Vec<RegionInfo>> {
        let r = RegionInfo {
            name: self.config.region.clone(),
            endpoint: self.config.ec2_endpoint.clone(),
        };
        for n in names {
            if *n != r.name {
                return Err(Error::invalid_value(format!("Invalid region: {n}")));
            }
        }
        filter::apply(vec![r], filters, |r, n| match n {
            "region-name" => Some(vec![r.name.clone()]),
            "endpoint" => Some(vec![r.endpoint.clone()]),
            "opt-in-status" => Some(vec!["opt-in-not-required".into()]),
            _ => None,
        })
    }

    pub async fn describe_availability_zones(
        &self,
        caller: &Caller,
        names: &[String],
        filters: &[Filter],
    ) -> Result<Vec<ZoneLine>> {
        let verbose = names.iter().any(|n| n == "verbose");
        let names: Vec<&String> = names.iter().filter(|n| *n != "verbose").collect();
        for n in &names {
            if !self.config.zones.contains(n) {
                return Err(Error::invalid_value(format!(
                    "Invalid availability zone: [{n}]"
                )));
            }
        }
        let zones: Vec<ZoneLine> = self
            .config
            .zones
            .iter()
            .filter(|z| names.is_empty() || names.contains(z))
            .map(|z| ZoneLine {
                zone_name: z.clone(),
                state: "available".into(),
                region: self.config.region.clone(),
                messages: vec![],
            })
            .collect();
        let zones = filter::apply(zones, filters, |z, n| match n {
            "zone-name" => Some(vec![z.zone_name.clone()]),
            "region-name" => Some(vec![z.region.clone()]),
            "state" => Some(vec![z.state.clone()]),
            "message" => Some(z.messages.clone()),
            _ => None,
        })?;
        if !(verbose && caller.is_admin()) {
            return Ok(zones);
        }
        // What the zone's NCs report, node by node (an instance must fit on
        // one node); the host's own measure when no NC has reported.
        let nodes = self.node_capacity().await;
        let mut out = Vec::new();
        for z in zones {
            let per_type = |t: &VmType| -> (u64, u64) {
                match &nodes {
                    Some(nodes) if z.zone_name == self.config.zones[0] => {
                        nodes.iter().fold((0, 0), |(f, m), (total, free)| {
                            (f + free.fits(t), m + total.fits(t))
                        })
                    }
                    _ => {
                        let (total, free) = self.capacity.capacity(&z.zone_name);
                        (free.fits(t), total.fits(t))
                    }
                }
            };
            let line = |name: String, state: String| ZoneLine {
                zone_name: name,
                state,
                region: z.region.clone(),
                messages: vec![],
            };
            out.push(line(
                z.zone_name.clone(),
                format!("{} arn:euca:eucalyptus:{0}:cluster:cc-{0}/", z.zone_name),
            ));
            out.push(line(
                "|- vm types".into(),
                "free / max   cpu   ram  disk".into(),
            ));
            for t in &self.config.vm_types {
                let (free, max) = per_type(t);
                out.push(line(
                    format!("|- {}", t.name),
                    format!(
                        "{:04} / {:04}   {:>3}  {:>4}  {:>4}",
                        free, max, t.cpus, t.memory_mib, t.disk_gib
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// (total, free) of every reachable NC of the zone's cluster, or `None`
    /// when none has reported.
    async fn node_capacity(&self) -> Option<Vec<(Capacity, Capacity)>> {
        let report = self.cluster.report().await.ok()?;
        let live = self.live_instances().await.ok()?;
        let free = self.free_by_node(&report, &live);
        let out: Vec<(Capacity, Capacity)> = report
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .filter_map(|n| {
                let r = n.report.as_ref()?;
                let total = Capacity {
                    cpus: r.cpus,
                    memory_mib: r.memory_mib,
                    disk_gib: r.disk_gib,
                };
                let f = free.iter().find(|(id, _)| *id == n.node_id)?.1;
                Some((total, f))
            })
            .collect();
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testutil::caller;
    use crate::{CapacitySource, CloudConfig};
    use ironbark_keypair::SealKey;
    use ironbark_store::SqliteStore;

    struct Fixed;
    impl CapacitySource for Fixed {
        fn capacity(&self, _z: &str) -> (Capacity, Capacity) {
            let total = Capacity {
                cpus: 8,
                memory_mib: 4096,
                disk_gib: 100,
            };
            let free = Capacity {
                cpus: 2,
                memory_mib: 1024,
                disk_gib: 50,
            };
            (total, free)
        }
    }

    #[tokio::test]
    async fn verbose_zone_view_is_admin_only_and_counts_capacity() {
        let c = Cloud::new(
            Arc::new(SqliteStore::in_memory().await.unwrap()),
            SealKey::generate(),
            CloudConfig::new("/nonexistent", "http://127.0.0.1:8773/"),
            Arc::new(Fixed),
        );
        c.ensure_admin_account().await.unwrap();
        let admin = caller(&c, "x").await;
        let admin = Caller {
            account: c.account_named("eucalyptus").await.unwrap(),
            ..admin
        };
        let user = caller(&c, "alice").await;
        let v = vec!["verbose".to_string()];
        assert_eq!(
            c.describe_availability_zones(&user, &v, &[])
                .await
                .unwrap()
                .len(),
            1
        );
        let lines = c
            .describe_availability_zones(&admin, &v, &[])
            .await
            .unwrap();
        assert_eq!(lines.len(), 2 + VmType::defaults().len());
        let small = lines.iter().find(|l| l.zone_name == "|- m1.small").unwrap();
        // m1.small is 1 cpu / 256 MiB / 5 GiB: cpu bounds free at 2, total at 8.
        assert_eq!(small.state, "0002 / 0008     1   256     5");
        assert!(
            c.describe_availability_zones(&user, &["nowhere".into()], &[])
                .await
                .is_err()
        );
        assert!(c.describe_regions(&["us-east-1".into()], &[]).is_err());
        assert_eq!(c.describe_regions(&[], &[]).unwrap()[0].name, "eucalyptus");
    }
}
