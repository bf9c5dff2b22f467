//! Shared test fixtures: a configuration and a two-segment, three-instance
//! zone as the CLC would send it. Public so the crate's integration tests
//! and other crates' tests can build on them.

use ironbark_cluster_api::{
    IngressRule, InstanceDesired, InstanceMetadata, RuleProtocol, RuleSourceSpec, Segment,
    ZoneDesired,
};
use ironbark_node_api::{BootImage, ImageRef, InstanceSpec, NicSpec, VmResources};

use crate::config::CcConfig;

pub fn cfg() -> CcConfig {
    let mut c = CcConfig::new("zone-a", "t0ken", "/var/lib/ironbark/cc");
    c.dns_servers = vec!["192.0.2.53".into()];
    c
}

pub fn instance(
    id: &str,
    group: &str,
    bridge: &str,
    ip: &str,
    mac: &str,
    node: &str,
) -> InstanceDesired {
    let image = ImageRef {
        id: "eki-1".into(),
        url: "http://w/eki-1".into(),
        sha256: "00".into(),
        size: 1,
    };
    InstanceDesired {
        spec: InstanceSpec {
            instance_id: id.into(),
            account_id: "123456789012".into(),
            vm: VmResources {
                cpus: 1,
                memory_mib: 256,
                disk_gib: 1,
            },
            image: BootImage {
                kernel: image,
                ramdisk: None,
                root: None,
                cmdline: String::new(),
            },
            nics: vec![NicSpec {
                mac: mac.into(),
                bridge: bridge.into(),
                tap: ironbark_node_api::tap_name(id),
            }],
        },
        node_id: node.into(),
        group_id: group.into(),
        private_ip: ip.into(),
        public_ip: None,
        volumes: Vec::new(),
        metadata: InstanceMetadata {
            ami_id: "emi-0000abcd".into(),
            reservation_id: format!("r-{}", &id[2..]),
            instance_type: "t1.micro".into(),
            hostname: format!("ip-{}", ip.replace('.', "-")),
            local_ipv4: ip.into(),
            public_ipv4: None,
            availability_zone: "zone-a".into(),
            security_groups: vec![group.trim_start_matches("sg-").into()],
            public_key: None,
            user_data: None,
            kernel_id: Some("eki-1".into()),
            ramdisk_id: None,
            block_device_mapping: vec![
                ("ami".into(), "/dev/sda1".into()),
                ("root".into(), "/dev/sda1".into()),
                ("ephemeral0".into(), "sda2".into()),
            ],
        },
    }
}

/// Two segments, three instances (two in the first), as the CLC sends them.
pub fn zone() -> ZoneDesired {
    ZoneDesired {
        generation: 7,
        node_poll_secs: None,
        segments: vec![
            Segment {
                group_id: "sg-web".into(),
                tag: 10,
                bridge: "ibr0".into(),
                subnet: "10.200.0.0/28".into(),
                gateway: "10.200.0.1".into(),
                rules: Vec::new(),
            },
            Segment {
                group_id: "sg-db".into(),
                tag: 11,
                bridge: "ibr1".into(),
                subnet: "10.200.0.16/28".into(),
                gateway: "10.200.0.17".into(),
                rules: Vec::new(),
            },
        ],
        instances: vec![
            instance(
                "i-0000000b",
                "sg-web",
                "ibr0",
                "10.200.0.3",
                "D0:0D:00:00:00:0B",
                "nc1",
            ),
            instance(
                "i-0000000a",
                "sg-web",
                "ibr0",
                "10.200.0.2",
                "d0:0d:00:00:00:0a",
                "nc1",
            ),
            instance(
                "i-0000000c",
                "sg-db",
                "ibr1",
                "10.200.0.18",
                "d0:0d:00:00:00:0c",
                "nc2",
            ),
        ],
    }
}

/// An ingress rule.
pub fn rule(protocol: RuleProtocol, from: i32, to: i32, source: RuleSourceSpec) -> IngressRule {
    IngressRule {
        protocol,
        from_port: from,
        to_port: to,
        source,
    }
}

/// [`zone`] with public addresses and rules of every kind: sg-web takes
/// ssh from anywhere, 80-81 from a block, ping from sg-db, DNS from the db
/// instance's public address (which must admit its private one too);
/// sg-db takes 5432 from sg-web, 22 overlapping 20-30 from anywhere, and
/// everything from 192.0.2.0/24.
pub fn zone_with_rules() -> ZoneDesired {
    let mut z = zone();
    for (i, p) in z
        .instances
        .iter_mut()
        .zip(["203.0.113.11", "203.0.113.10", "203.0.113.20"])
    {
        i.public_ip = Some(p.into());
        i.metadata.public_ipv4 = Some(p.into());
    }
    let cidr = |c: &str| RuleSourceSpec::Cidr(c.into());
    z.segments[0].rules = vec![
        rule(RuleProtocol::Tcp, 22, 22, cidr("0.0.0.0/0")),
        rule(RuleProtocol::Tcp, 80, 81, cidr("198.51.100.0/24")),
        rule(
            RuleProtocol::Icmp,
            8,
            -1,
            RuleSourceSpec::Group("sg-db".into()),
        ),
        rule(RuleProtocol::Udp, 53, 53, cidr("203.0.113.20/32")),
    ];
    z.segments[1].rules = vec![
        rule(
            RuleProtocol::Tcp,
            5432,
            5432,
            RuleSourceSpec::Group("sg-web".into()),
        ),
        rule(RuleProtocol::Tcp, 22, 22, cidr("0.0.0.0/0")),
        rule(RuleProtocol::Tcp, 20, 30, cidr("10.0.0.0/8")),
        rule(RuleProtocol::All, -1, -1, cidr("192.0.2.0/24")),
    ];
    z
}

/// A zone for scale tests and benches: `groups` segments (`sg-s<i>`, tag
/// `1000 + i`, bridge `ibr<i>`, a /28 each from 10.128.0.0/9) with two
/// instances each (public addresses from the benchmarking range
/// 198.18.0.0/15), and `rules` rules spread over the groups: tcp and udp
/// port ranges from distinct /32s and /24s, ICMP types, and every fifth a
/// source-group rule naming the next group. Group 0's first instance is
/// 10.128.0.2 with the public address 203.0.113.10, for probes from an
/// internet host in 192.0.2.0/24, which no generated rule admits.
pub fn scale_zone(groups: u32, rules: u32) -> ZoneDesired {
    use std::net::Ipv4Addr;
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let public = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let mut z = ZoneDesired {
        generation: 1,
        node_poll_secs: None,
        segments: Vec::new(),
        instances: Vec::new(),
    };
    for g in 0..groups {
        let net = base + g * 16;
        z.segments.push(Segment {
            group_id: format!("sg-s{g}"),
            tag: 1000 + g,
            bridge: format!("ibr{g}"),
            subnet: format!("{}/28", Ipv4Addr::from(net)),
            gateway: Ipv4Addr::from(net + 1).to_string(),
            rules: Vec::new(),
        });
        for k in 0..2 {
            let id = format!("i-{:08x}", g * 2 + k);
            let ip = Ipv4Addr::from(net + 2 + k).to_string();
            let mac = format!(
                "d0:0d:{:02x}:{:02x}:{:02x}:{:02x}",
                g >> 16 & 0xff,
                g >> 8 & 0xff,
                g & 0xff,
                k
            );
            let mut i = instance(
                &id,
                &format!("sg-s{g}"),
                &format!("ibr{g}"),
                &ip,
                &mac,
                "nc1",
            );
            i.public_ip = Some(if g == 0 && k == 0 {
                "203.0.113.10".to_string()
            } else {
                Ipv4Addr::from(public + g * 2 + k).to_string()
            });
            z.instances.push(i);
        }
    }
    for r in 0..rules {
        let g = r % groups;
        let n = r / groups;
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + r);
        let rule = match n % 5 {
            0 => rule(
                RuleProtocol::Tcp,
                1000 + n as i32,
                1000 + n as i32,
                RuleSourceSpec::Cidr(format!("{src}/32")),
            ),
            1 => rule(
                RuleProtocol::Udp,
                2000 + n as i32,
                2010 + n as i32,
                RuleSourceSpec::Cidr(format!("{src}/32")),
            ),
            2 => rule(
                RuleProtocol::Icmp,
                (n % 16) as i32,
                -1,
                RuleSourceSpec::Cidr(format!("{src}/32")),
            ),
            3 => rule(
                RuleProtocol::Tcp,
                3000 + n as i32,
                3000 + n as i32,
                RuleSourceSpec::Group(format!("sg-s{}", (g + 1) % groups)),
            ),
            _ => rule(
                RuleProtocol::Tcp,
                4000 + n as i32,
                4100 + n as i32,
                RuleSourceSpec::Cidr(format!("{}/24", Ipv4Addr::from(u32::from(src) & !0xff))),
            ),
        };
        z.segments[g as usize].rules.push(rule);
    }
    z
}
