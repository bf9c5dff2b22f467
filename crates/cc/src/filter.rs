//! Security-group filtering and public-address NAT, as nftables set and
//! map elements.
//!
//! Why sets and not rules: the per-packet cost must not grow with the
//! number of rules, and a rule change must be an atomic, fast update. So
//! the table's chains are fixed (see [`mod@crate::plan`]) and everything the
//! security groups say lives in a handful of sets and maps:
//!
//! - `dst_group` (`ipv4_addr : verdict`): an instance's private address to
//!   a jump to its group's chain `g<tag>`. One hash lookup classifies the
//!   packet's destination.
//! - per group, `g<tag>_all` (`ipv4_addr . inet_proto`, any protocol: a
//!   concatenation, because nft reads every element of a plain interval
//!   set back before each change, and there are thousands), `g<tag>_ports` (`ipv4_addr .
//!   inet_proto . inet_service`) and `g<tag>_icmp` (`ipv4_addr . icmp_type
//!   . icmp_code`): one lookup each in interval (concatenation) sets. They
//!   are per group because the kernel's concatenation lookup walks bitmaps
//!   as long as the set has elements: with one set for the whole zone the
//!   cost would grow with every group's rules; per group it depends only on
//!   the destination group's own.
//! - `pub2priv` / `priv2pub` (`ipv4_addr : ipv4_addr`): DNAT and SNAT.
//! - `subnets` (`ipv4_addr . inet_proto`, intervals, any protocol: a
//!   concatenation for the same reason as `g<tag>_all`): the segments, for
//!   the hairpin masquerade of instances that have no public address.
//!
//! Rules become elements here: a CIDR source also admits the private
//! address of every instance whose public address lies in it (filtering
//! runs after DNAT and before SNAT, so a packet between instances still
//! carries the sender's private address: that is the original's bug this
//! fixes); a source group expands to its members' private and public
//! addresses; members of a group always reach each other. The kernel
//! refuses interval elements that overlap at their ends, so each group's
//! elements are first cut into disjoint boxes ([`disjoint`]), which also
//! makes the output canonical for golden tests and for diffing. That cut
//! and the formatting are most of a plan's cost, so [`elements_cached`]
//! redoes them only for groups whose inputs changed ([`ElementCache`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ironbark_cluster_api::{IngressRule, RuleProtocol, RuleSourceSpec};

use crate::plan::Ipv4Net;

/// An inclusive range on one axis (addresses, ports, ICMP types...).
pub type Range = (u32, u32);

/// A box: ranges on the key axes, then the source-address range.
pub type KeyedBox = (Vec<Range>, Range);

/// One instance as filtering and NAT see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub group_id: String,
    pub private: Ipv4Addr,
    pub public: Option<Ipv4Addr>,
}

/// One group that has a segment here: its tag (the mark) and rules.
#[derive(Clone, Debug)]
pub struct GroupRules<'a> {
    pub group_id: &'a str,
    pub tag: u32,
    pub rules: &'a [IngressRule],
}

/// The names of the table's zone-wide sets and maps.
pub const SETS: &[&str] = &["dst_group", "pub2priv", "priv2pub", "subnets"];

/// The chain of the group with `tag`, and its sets: everything, ports,
/// ICMP.
pub fn group_chain(tag: u32) -> String {
    format!("g{tag}")
}

pub fn group_sets(tag: u32) -> [String; 3] {
    ["all", "ports", "icmp"].map(|k| format!("g{tag}_{k}"))
}

/// Every element of every set, as `nft` text, sorted. A set is shared
/// (`Arc`) between plans whose inputs for it did not change (see
/// [`ElementCache`]), so a difference can skip it by pointer and keeping
/// the last loaded elements costs no copy.
pub type Elements = BTreeMap<String, SharedSet>;

/// What the last plan built, by the inputs that determined it, so the next
/// plan only rebuilds what those inputs changed: a rule change rebuilds its
/// own group's three sets, not the zone's thousands of elements. The key
/// is the group's boxes before [`disjoint`] (its rules with sources
/// resolved: CIDRs with the members whose public address is inside,
/// source groups with their members' addresses), which are cheap to
/// recompute and compare; the elements are the expensive part.
#[derive(Debug, Default)]
pub struct ElementCache {
    groups: HashMap<u32, (GroupBoxes, [SharedSet; 3])>,
    zone: Option<(ZoneKey, [SharedSet; 4])>,
}

/// One set's elements, shared between plans (see [`Elements`]).
pub type SharedSet = Arc<BTreeSet<String>>;

/// A group's allow rules as boxes, in rule order (before [`disjoint`]):
/// sources; protocol, ports and source; ICMP type, code and source. Flat,
/// so building and comparing them allocates nothing per rule.
#[derive(Debug, Default, PartialEq, Eq)]
struct GroupBoxes {
    all: Vec<Range>,
    ports: Vec<[Range; 3]>,
    icmp: Vec<[Range; 3]>,
}

/// What the zone-wide sets are made of: per member its private address,
/// public address and group tag; the segments' subnets.
type ZoneKey = (Vec<(Ipv4Addr, Option<Ipv4Addr>, u32)>, Vec<Ipv4Net>);

/// The elements for `groups` (with segments here), `members` (the planned
/// instances) and the segments' `subnets`; and warnings for rules that
/// could not be used.
pub fn elements(
    groups: &[GroupRules<'_>],
    members: &[Member],
    subnets: &[Ipv4Net],
    warnings: &mut Vec<String>,
) -> Elements {
    elements_cached(
        groups,
        members,
        subnets,
        warnings,
        &mut ElementCache::default(),
    )
}

/// [`elements`], reusing what `cache` holds from the last call and leaving
/// this call's results in it.
pub fn elements_cached(
    groups: &[GroupRules<'_>],
    members: &[Member],
    subnets: &[Ipv4Net],
    warnings: &mut Vec<String>,
    cache: &mut ElementCache,
) -> Elements {
    let mut out = Elements::new();
    let tag_of: HashMap<&str, u32> = groups.iter().map(|g| (g.group_id, g.tag)).collect();
    // Indexes, so expanding a rule costs its own sources, not all members.
    let mut by_group: HashMap<&str, Vec<Range>> = HashMap::new();
    for m in members {
        let v = by_group.entry(m.group_id.as_str()).or_default();
        v.push(host(m.private));
        v.extend(m.public.map(host));
    }
    let mut by_public: Vec<(u32, Ipv4Addr)> = members
        .iter()
        .filter_map(|m| Some((u32::from(m.public?), m.private)))
        .collect();
    by_public.sort_unstable();
    let group_sources = |g: &str| by_group.get(g).map(Vec::as_slice).unwrap_or_default();

    let key: ZoneKey = (
        members
            .iter()
            .filter_map(|m| Some((m.private, m.public, *tag_of.get(m.group_id.as_str())?)))
            .collect(),
        subnets.to_vec(),
    );
    let zone_sets = match cache.zone.take() {
        Some((k, sets)) if k == key => sets,
        _ => zone_sets(&key),
    };
    for (name, set) in SETS.iter().zip(&zone_sets) {
        out.insert(name.to_string(), set.clone());
    }
    cache.zone = Some((key, zone_sets));

    let mut fresh = HashMap::with_capacity(groups.len());
    for g in groups {
        let boxes = group_boxes(g, group_sources, &by_public, warnings);
        let sets = match cache.groups.remove(&g.tag) {
            Some((old, sets)) if old == boxes => sets,
            _ => group_elements(&boxes),
        };
        for (name, set) in group_sets(g.tag).into_iter().zip(&sets) {
            out.insert(name, set.clone());
        }
        fresh.insert(g.tag, (boxes, sets));
    }
    // Groups that are gone are forgotten.
    cache.groups = fresh;
    out
}

fn zone_sets((members, subnets): &ZoneKey) -> [SharedSet; 4] {
    let (mut dst, mut pub2priv, mut priv2pub) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (private, public, tag) in members {
        dst.insert(format!("{private} : jump {}", group_chain(*tag)));
        if let Some(p) = public {
            pub2priv.insert(format!("{p} : {private}"));
            priv2pub.insert(format!("{private} : {p}"));
        }
    }
    let subnets = subnets.iter().map(|s| format!("{s} . 0-255")).collect();
    // In the order of `SETS`.
    [dst, pub2priv, priv2pub, subnets].map(Arc::new)
}

/// A group's rules as boxes; rules that cannot be used are left out with
/// a warning.
fn group_boxes<'a>(
    g: &GroupRules<'_>,
    group_sources: impl Fn(&str) -> &'a [Range],
    by_public: &[(u32, Ipv4Addr)],
    warnings: &mut Vec<String>,
) -> GroupBoxes {
    let mut b = GroupBoxes::default();
    // Members of the group reach each other on every protocol, also
    // through their public addresses (a hairpin through the CC).
    b.all.extend_from_slice(group_sources(g.group_id));
    for r in g.rules {
        let cidr;
        let sources: &[Range] = match &r.source {
            RuleSourceSpec::Cidr(c) => match c.parse::<Ipv4Net>() {
                Ok(net) => {
                    cidr = sources_of_cidr(&net, by_public);
                    &cidr
                }
                Err(e) => {
                    warnings.push(format!("rule of {} left out: {e}", g.group_id));
                    continue;
                }
            },
            RuleSourceSpec::Group(src) => group_sources(src),
        };
        match r.protocol {
            RuleProtocol::All => b.all.extend_from_slice(sources),
            RuleProtocol::Tcp | RuleProtocol::Udp => {
                let Some(range) = port_range(r.from_port, r.to_port) else {
                    warnings.push(format!(
                        "rule of {} left out: bad port range {}-{}",
                        g.group_id, r.from_port, r.to_port
                    ));
                    continue;
                };
                let proto = if r.protocol == RuleProtocol::Tcp {
                    6
                } else {
                    17
                };
                b.ports
                    .extend(sources.iter().map(|s| [(proto, proto), range, *s]));
            }
            RuleProtocol::Icmp => {
                let (Some(t), Some(c)) = (icmp_range(r.from_port), icmp_range(r.to_port)) else {
                    warnings.push(format!(
                        "rule of {} left out: bad ICMP type/code {}/{}",
                        g.group_id, r.from_port, r.to_port
                    ));
                    continue;
                };
                b.icmp.extend(sources.iter().map(|s| [t, c, *s]));
            }
        }
    }
    b
}

/// A group's `all`, `ports` and `icmp` sets from its boxes.
fn group_elements(b: &GroupBoxes) -> [SharedSet; 3] {
    let all = disjoint(b.all.iter().map(|s| (vec![], *s)).collect())
        .into_iter()
        .map(|(_, src)| format!("{} . 0-255", addr_range(src)))
        .collect();
    let keyed = |v: &[[Range; 3]]| v.iter().map(|[a, b, s]| (vec![*a, *b], *s)).collect();
    let ports = disjoint(keyed(&b.ports))
        .into_iter()
        .map(|(k, src)| {
            let proto = if k[0].0 == 6 { "tcp" } else { "udp" };
            format!("{} . {proto} . {}", addr_range(src), num_range(k[1]))
        })
        .collect();
    let icmp = disjoint(keyed(&b.icmp))
        .into_iter()
        .map(|(k, src)| {
            format!(
                "{} . {} . {}",
                addr_range(src),
                num_range(k[0]),
                num_range(k[1])
            )
        })
        .collect();
    [all, ports, icmp].map(Arc::new)
}

fn host(ip: Ipv4Addr) -> Range {
    (u32::from(ip), u32::from(ip))
}

/// The block itself, and the private address of every member whose
/// public address is inside (`by_public`: sorted public, private pairs).
fn sources_of_cidr(net: &Ipv4Net, by_public: &[(u32, Ipv4Addr)]) -> Vec<Range> {
    let (start, end) = (u32::from(net.network), u32::from(net.broadcast()));
    let mut v = vec![(start, end)];
    let first = by_public.partition_point(|(p, _)| *p < start);
    v.extend(
        by_public[first..]
            .iter()
            .take_while(|(p, _)| *p <= end)
            .map(|(_, private)| host(*private)),
    );
    v
}

fn port_range(from: i32, to: i32) -> Option<Range> {
    let ok = |p: i32| (0..=65535).contains(&p);
    (ok(from) && ok(to) && from <= to).then_some((from as u32, to as u32))
}

/// An ICMP type or code: `-1` is any.
fn icmp_range(v: i32) -> Option<Range> {
    match v {
        -1 => Some((0, 255)),
        0..=255 => Some((v as u32, v as u32)),
        _ => None,
    }
}

fn num_range((a, b): Range) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// An address range as a CIDR block when it is one, else `a-b`.
pub fn addr_range((a, b): Range) -> String {
    let size = u64::from(b) - u64::from(a) + 1;
    if size.is_power_of_two() && u64::from(a) % size == 0 {
        let len = 32 - size.trailing_zeros();
        if len == 32 {
            return Ipv4Addr::from(a).to_string();
        }
        return format!("{}/{len}", Ipv4Addr::from(a));
    }
    format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
}

/// Cuts boxes (key ranges, then a source range) into disjoint ones that
/// cover the same points: along each key axis in turn the boundaries of
/// every box split the axis into pieces, each piece gets the boxes that
/// cover it, and neighbouring pieces with the same content are joined
/// again; the sources of the last axis are merged into disjoint ranges.
/// The result is sorted and does not depend on the input's order.
pub fn disjoint(boxes: Vec<KeyedBox>) -> Vec<KeyedBox> {
    let Some(dims) = boxes.first().map(|b| b.0.len()) else {
        return vec![];
    };
    let refs: Vec<&KeyedBox> = boxes.iter().collect();
    split(&refs, 0, dims)
}

fn split(boxes: &[&KeyedBox], dim: usize, dims: usize) -> Vec<KeyedBox> {
    if dim == dims {
        return merge(boxes.iter().map(|b| b.1).collect())
            .into_iter()
            .map(|r| (vec![], r))
            .collect();
    }
    let mut points: Vec<u64> = boxes
        .iter()
        .flat_map(|b| [u64::from(b.0[dim].0), u64::from(b.0[dim].1) + 1])
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces: Vec<(Range, Vec<KeyedBox>)> = Vec::new();
    for w in points.windows(2) {
        let (lo, hi) = (w[0] as u32, (w[1] - 1) as u32);
        let covering: Vec<&KeyedBox> = boxes
            .iter()
            .copied()
            .filter(|b| b.0[dim].0 <= lo && b.0[dim].1 >= hi)
            .collect();
        if covering.is_empty() {
            continue;
        }
        let sub = split(&covering, dim + 1, dims);
        match pieces.last_mut() {
            Some((r, last)) if u64::from(r.1) + 1 == u64::from(lo) && *last == sub => r.1 = hi,
            _ => pieces.push(((lo, hi), sub)),
        }
    }
    let mut out = Vec::new();
    for (r, sub) in pieces {
        for (mut keys, src) in sub {
            keys.insert(0, r);
            out.push((keys, src));
        }
    }
    out
}

/// Disjoint, sorted, with touching ranges joined.
fn merge(mut v: Vec<Range>) -> Vec<Range> {
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The `add element` lines that load `elements` into table `table`.
pub fn add_lines(table: &str, elements: &Elements) -> String {
    let mut s = String::new();
    for (set, items) in elements {
        for chunk in items.iter().collect::<Vec<_>>().chunks(512) {
            let list: Vec<&str> = chunk.iter().map(|e| e.as_str()).collect();
            let _ = writeln!(s, "add element ip {table} {set} {{ {} }}", list.join(", "));
        }
    }
    s
}

/// The key of an element (what `delete element` takes): a map's element
/// is `key : value`.
pub fn element_key(e: &str) -> &str {
    e.split_once(" : ").map_or(e, |(k, _)| k)
}

/// How `delete element` must name an element of `set`. nft 1.0.6 cannot
/// find a single value inside an interval concatenation unless it is
/// written as a range (`a-a`), although it adds it fine either way.
fn delete_form(set: &str, key: &str) -> String {
    let concat = set == "subnets" || ["_all", "_ports", "_icmp"].iter().any(|k| set.ends_with(k));
    if !concat {
        return key.to_string();
    }
    key.split(" . ")
        .map(|c| {
            if c.contains(['-', '/']) || c.chars().all(|ch| ch.is_ascii_alphabetic()) {
                c.to_string()
            } else {
                format!("{c}-{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

/// One `nft -f` script that turns `from` into `to` by deleting and adding
/// elements only; `None` when nothing differs.
pub fn delta_script(table: &str, from: &Elements, to: &Elements) -> Option<String> {
    let empty = BTreeSet::new();
    let mut del = String::new();
    let mut add = String::new();
    let names: BTreeSet<&String> = from.keys().chain(to.keys()).collect();
    for set in names {
        let (old, new) = match (from.get(set), to.get(set)) {
            // The same set object: the planner reused it, nothing changed.
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => continue,
            (a, b) => (
                a.map_or(&empty, |s| s.as_ref()),
                b.map_or(&empty, |s| s.as_ref()),
            ),
        };
        let gone: Vec<String> = old
            .difference(new)
            .map(|e| delete_form(set, element_key(e)))
            .collect();
        let came: Vec<&str> = new.difference(old).map(|e| e.as_str()).collect();
        for chunk in gone.chunks(512) {
            let _ = writeln!(
                del,
                "delete element ip {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
        for chunk in came.chunks(512) {
            let _ = writeln!(
                add,
                "add element ip {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    (!del.is_empty() || !add.is_empty()).then(|| format!("{del}{add}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn boxes_become_disjoint_and_canonical() {
        // tcp 22 from everywhere, tcp 20-30 from 10/8: the overlap at 22
        // must not be listed twice.
        let a = (vec![(6, 6), (22, 22)], (0, u32::MAX));
        let b = (
            vec![(6, 6), (20, 30)],
            (ip("10.0.0.0"), ip("10.255.255.255")),
        );
        let out = disjoint(vec![a.clone(), b.clone()]);
        assert_eq!(
            out,
            vec![
                (
                    vec![(6, 6), (20, 21)],
                    (ip("10.0.0.0"), ip("10.255.255.255"))
                ),
                (vec![(6, 6), (22, 22)], (0, u32::MAX)),
                (
                    vec![(6, 6), (23, 30)],
                    (ip("10.0.0.0"), ip("10.255.255.255"))
                ),
            ]
        );
        assert_eq!(disjoint(vec![b, a]), out);
        // Touching sources merge; a duplicate disappears.
        let c = (vec![], (ip("10.0.0.0"), ip("10.0.0.127")));
        let d = (vec![], (ip("10.0.0.128"), ip("10.0.0.255")));
        assert_eq!(
            disjoint(vec![c.clone(), d, c]),
            vec![(vec![], (ip("10.0.0.0"), ip("10.0.0.255")))]
        );
        assert_eq!(disjoint(vec![]), vec![]);
    }

    #[test]
    fn ranges_print_as_cidr_when_they_are_one() {
        assert_eq!(addr_range((0, u32::MAX)), "0.0.0.0/0");
        assert_eq!(addr_range((ip("10.0.0.5"), ip("10.0.0.5"))), "10.0.0.5");
        assert_eq!(addr_range((ip("10.0.0.0"), ip("10.0.0.15"))), "10.0.0.0/28");
        assert_eq!(
            addr_range((ip("10.0.0.1"), ip("10.0.0.2"))),
            "10.0.0.1-10.0.0.2"
        );
    }

    #[test]
    fn deltas_delete_by_key_and_add() {
        let mut a = Elements::new();
        a.insert(
            "pub2priv".into(),
            Arc::new(["192.0.2.1 : 10.0.0.2".to_string()].into()),
        );
        let mut b = Elements::new();
        b.insert(
            "pub2priv".into(),
            Arc::new(["192.0.2.1 : 10.0.0.3".to_string()].into()),
        );
        assert_eq!(
            delta_script("t", &a, &b).unwrap(),
            "delete element ip t pub2priv { 192.0.2.1 }\n\
             add element ip t pub2priv { 192.0.2.1 : 10.0.0.3 }\n"
        );
        assert_eq!(delta_script("t", &a, &a), None);
        let mut c = Elements::new();
        c.insert(
            "g10_ports".into(),
            Arc::new(
                [
                    "10.0.0.2 . tcp . 22".to_string(),
                    "10.0.0.0/8 . udp . 5-6".to_string(),
                ]
                .into(),
            ),
        );
        assert_eq!(
            delta_script("t", &c, &Elements::new()).unwrap(),
            "delete element ip t g10_ports { 10.0.0.0/8 . udp . 5-6, 10.0.0.2-10.0.0.2 . tcp . 22-22 }\n"
        );
    }
}
