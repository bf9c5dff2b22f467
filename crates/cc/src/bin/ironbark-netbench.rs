//! The CC's data-path bench (run by `benches/network.sh`, as root).
//!
//! It plans a zone of `NET_GROUPS` security groups and `NET_RULES` rules
//! ([`ironbark_cc::testdata::scale_zone`]), loads the `ironbark` table into
//! a "router" namespace between an internet namespace and an instance
//! namespace, and prints:
//!
//! 1. the planner's time, from scratch and (as the controller runs it,
//!    with [`Planner`]'s memory) after a one-rule change, and the table's
//!    size;
//! 2. the time from a rule change (a new zone, as the CLC sends it) to
//!    enforcement: the planner, then the table part of the reconcile
//!    ([`reconcile_nft`]: one element transaction, without reading the
//!    table first), for an authorize and for a revoke, each checked with
//!    real traffic; and the first change after a restart (the table's
//!    state is read, the whole table replaced);
//! 3. the per-packet cost of the forward path: a UDP flood from the
//!    internet namespace to the instance, through the router with no
//!    ruleset, with the CC's table at `NET_RULES` and at 100 rules, and with an
//!    equivalent linear iptables ruleset (one rule per rule and source
//!    address, the flood's rule last) at both sizes. Forwarding happens in
//!    the sender's system calls (veth delivers in the sending context), so
//!    nanoseconds per `send` are the path's cost; best of `RUNS`.
//!
//! `nft` runs as on a CC host: started directly, in the router namespace
//! (this thread enters it); `NFT_VIA_IP_NETNS=1` starts it through `ip
//! netns exec` instead, as the CC's tests do.
//!
//! Knobs (environment): `NET_GROUPS` (1000), `NET_RULES` (10000), `PACKETS`
//! (200000), `RUNS` (5), `CHANGES` (5), `NFT_VIA_IP_NETNS`; `DUMP=<file>`
//! writes the table's script and exits, `PROFILE_PLAN=<n>` times n
//! one-rule changes through one planner and exits (for `perf record`).
//! Namespaces are `ibnb<pid>-*` and are removed on exit, also on failure.

use std::fs::File;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use ironbark_cc::hostnet::reconcile_nft;
use ironbark_cc::plan::Planner;
use ironbark_cc::testdata::{rule, scale_zone};
use ironbark_cc::{CcConfig, HostNet, LinuxHostNet, plan};
use ironbark_cluster_api::{RuleProtocol, RuleSourceSpec, RuleSourceSpec::Cidr, ZoneDesired};
use nix::sched::{CloneFlags, setns};
use nix::sys::resource::{UsageWho, getrusage};
use nix::time::{ClockId, clock_gettime};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_in(input: &str, args: &[&str]) {
    use std::io::Write;
    let mut c = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "{args:?} failed");
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Sends `n` 64-byte UDP datagrams from namespace `ns`; CPU nanoseconds
/// each, counted on the sending thread (which the forwarding runs on), so
/// time other processes take on this shared machine does not count.
fn flood(ns: &str, to: &str, n: u64) -> f64 {
    let path = format!("/run/netns/{ns}");
    let to = to.to_string();
    std::thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("192.0.2.2:40000").unwrap();
        s.connect(&to).unwrap();
        let buf = [0u8; 64];
        for _ in 0..1000 {
            let _ = s.send(&buf);
        }
        let cpu = || {
            let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            t.tv_sec() as f64 * 1e9 + t.tv_nsec() as f64
        };
        let c0 = cpu();
        for _ in 0..n {
            let _ = s.send(&buf);
        }
        (cpu() - c0) / n as f64
    })
    .join()
    .unwrap()
}

/// Packets the instance's interface has received.
fn rx(ns: &str) -> u64 {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        "/sys/class/net/eth0/statistics/rx_packets",
    ])
    .trim()
    .parse()
    .unwrap()
}

/// Whether a few datagrams get through to the instance.
fn passes(src: &str, dst: &str) -> bool {
    let before = rx(dst);
    flood(src, "10.128.0.2:9", 20);
    std::thread::sleep(Duration::from_millis(50));
    rx(dst) >= before + 1000
}

fn best(runs: u64, src: &str, dst: &str, packets: u64) -> (f64, f64) {
    let mut best = f64::MAX;
    let mut delivered = 0.0;
    for _ in 0..runs {
        let before = rx(dst);
        let ns = flood(src, "10.128.0.2:9", packets);
        std::thread::sleep(Duration::from_millis(50));
        best = best.min(ns);
        // The flood's 1000 warm-up datagrams arrive too.
        delivered = (rx(dst) - before) as f64 / (packets + 1000) as f64;
    }
    (best, delivered)
}

/// The probe's rule: udp 9 from the internet's block, on group 0.
fn with_probe(mut z: ZoneDesired) -> ZoneDesired {
    z.generation += 1;
    z.segments[0]
        .rules
        .push(rule(RuleProtocol::Udp, 9, 9, Cidr("192.0.2.0/24".into())));
    z
}

/// The same rules as a linear iptables ruleset: one rule per rule and
/// source address, in zone order (the probe's last), replies first.
fn iptables_rules(z: &ZoneDesired) -> (String, usize) {
    let mut s = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A FORWARD -m conntrack --ctdir REPLY -j ACCEPT\n",
    );
    let mut n = 0;
    let members = |g: &str| -> Vec<String> {
        z.instances
            .iter()
            .filter(|i| i.group_id == g)
            .flat_map(|i| std::iter::once(i.private_ip.clone()).chain(i.public_ip.clone()))
            .collect()
    };
    // Group 0 (the probe's) last, its probe rule last of all: the worst
    // case of a linear list, which is what a packet to a busy group meets.
    for seg in z.segments.iter().rev() {
        for r in &seg.rules {
            let sources = match &r.source {
                RuleSourceSpec::Cidr(c) => vec![c.clone()],
                RuleSourceSpec::Group(g) => members(g),
            };
            let proto = match r.protocol {
                RuleProtocol::Tcp => format!("-p tcp --dport {}:{}", r.from_port, r.to_port),
                RuleProtocol::Udp => format!("-p udp --dport {}:{}", r.from_port, r.to_port),
                RuleProtocol::Icmp if r.from_port < 0 => "-p icmp".to_string(),
                RuleProtocol::Icmp if r.to_port < 0 => {
                    format!("-p icmp --icmp-type {}", r.from_port)
                }
                RuleProtocol::Icmp => format!("-p icmp --icmp-type {}/{}", r.from_port, r.to_port),
                RuleProtocol::All => String::new(),
            };
            for src in sources {
                s.push_str(&format!(
                    "-A FORWARD -d {} -s {src} {proto} -j ACCEPT\n",
                    seg.subnet
                ));
                n += 1;
            }
        }
    }
    s.push_str("-A FORWARD -d 10.128.0.0/9 -j DROP\nCOMMIT\n");
    (s, n)
}

/// CPU time of finished child processes (`nft`, `ip`), user and system.
fn children_cpu_ms() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
    ms(u.user_time()) + ms(u.system_time())
}

fn cpu_ms() -> f64 {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6
}

fn main() {
    let groups = env("NET_GROUPS", 1000) as u32;
    let rules = env("NET_RULES", 10000) as u32;
    let packets = env("PACKETS", 200_000);
    let runs = env("RUNS", 5);
    let changes = env("CHANGES", 5);
    let pid = std::process::id();
    let [src, rtr, dst] = ["in", "rt", "vm"].map(|n| format!("ibnb{pid}-{n}"));
    let _ns = Namespaces(vec![src.clone(), rtr.clone(), dst.clone()]);
    for ns in [&src, &rtr, &dst] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "link", "add", "pub0", "netns", &rtr, "type", "veth", "peer", "name", "eth0",
        "netns", &src,
    ]);
    sh(&[
        "ip", "link", "add", "ibr0", "netns", &rtr, "type", "veth", "peer", "name", "eth0",
        "netns", &dst,
    ]);
    for (ns, dev, addr) in [
        (&src, "eth0", "192.0.2.2/24"),
        (&rtr, "pub0", "192.0.2.1/24"),
        (&rtr, "ibr0", "10.128.0.1/28"),
        (&dst, "eth0", "10.128.0.2/28"),
    ] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    sh(&[
        "ip",
        "-n",
        &src,
        "route",
        "add",
        "10.128.0.0/9",
        "via",
        "192.0.2.1",
    ]);
    sh(&[
        "ip",
        "-n",
        &dst,
        "route",
        "add",
        "default",
        "via",
        "10.128.0.1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &rtr,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    // A bound, never-read socket: datagrams end at its full buffer, not in
    // ICMP port-unreachable replies.
    let sink_path = format!("/run/netns/{dst}");
    let _sink = std::thread::spawn(move || {
        setns(File::open(&sink_path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("10.128.0.2:9").unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        drop(s);
    });
    std::thread::sleep(Duration::from_millis(100));

    let state = std::env::temp_dir().join(format!("ironbark-netbench-{pid}"));
    let mut cfg = CcConfig::new("bench", "t", &state);
    if std::env::var("NFT_VIA_IP_NETNS").is_ok_and(|v| v == "1") {
        // How the CC's tests run it: every `nft` through `ip netns exec`.
        cfg.netns = Some(rtr.clone());
    } else {
        // As a CC runs on its host: `nft` started directly, in the router's
        // namespace because this thread (which starts it) is there.
        setns(
            File::open(format!("/run/netns/{rtr}")).unwrap(),
            CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
    }
    let net = LinuxHostNet::new(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("# ironbark CC data path: {groups} groups, {rules} rules");
    println!(
        "# load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let zone = scale_zone(groups, rules);
    let mut plan_ms = f64::MAX;
    let mut plan_cpu = f64::MAX;
    let mut p = plan(&zone, &cfg);
    for _ in 0..5 {
        let (t, c) = (Instant::now(), cpu_ms());
        p = plan(&zone, &cfg);
        plan_ms = plan_ms.min(t.elapsed().as_secs_f64() * 1e3);
        plan_cpu = plan_cpu.min(cpu_ms() - c);
    }
    let nft = p.nft.clone().unwrap();
    if let Some(n) = std::env::var("PROFILE_PLAN")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        // For `perf record`: n one-rule changes through one planner.
        let mut planner = Planner::default();
        let (with, without) = (with_probe(zone.clone()), zone.clone());
        let (t, c) = (Instant::now(), cpu_ms());
        for i in 0..n {
            planner.plan(if i % 2 == 0 { &with } else { &without }, &cfg);
        }
        println!(
            "{:.2} ms wall, {:.2} ms CPU per plan",
            t.elapsed().as_secs_f64() * 1e3 / n as f64,
            (cpu_ms() - c) / n as f64
        );
        return;
    }
    if let Ok(path) = std::env::var("DUMP") {
        // For looking at the table by hand: the script, then exit.
        std::fs::write(path, ironbark_cc::linux::nft_replace_script(&nft)).unwrap();
        return;
    }
    let elements: usize = nft.elements.values().map(|s| s.len()).sum();
    // What the controller does per update: a planner that remembers the
    // last plan, here primed with the zone, then given one more rule.
    let mut planner = Planner::default();
    planner.plan(&zone, &cfg);
    let (mut inc_ms, mut inc_cpu) = (f64::MAX, f64::MAX);
    for i in 0..5 {
        let next = if i % 2 == 0 {
            with_probe(zone.clone())
        } else {
            zone.clone()
        };
        let (t, c) = (Instant::now(), cpu_ms());
        let q = planner.plan(&next, &cfg);
        inc_ms = inc_ms.min(t.elapsed().as_secs_f64() * 1e3);
        inc_cpu = inc_cpu.min(cpu_ms() - c);
        assert_eq!(q, plan(&next, &cfg), "the planner's memory changes nothing");
    }
    println!(
        "plan: {plan_ms:.1} ms wall, {plan_cpu:.1} ms CPU from scratch (best of 5); \
         {inc_ms:.1} ms wall, {inc_cpu:.1} ms CPU after a one-rule change (best of 5)"
    );
    println!(
        "  {} set elements ({} in the groups' allow sets); warnings {}",
        elements,
        nft.elements
            .iter()
            .filter(|(k, _)| k.starts_with('g'))
            .map(|(_, s)| s.len())
            .sum::<usize>(),
        p.warnings.len()
    );
    let t = Instant::now();
    rt.block_on(net.apply_nft(&nft)).unwrap();
    println!("full table load: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    assert!(
        !passes(&src, &dst),
        "the probe must be dropped before the rule"
    );

    // Rule change to enforcement, authorize then revoke, as the CC does it:
    // its planner (which remembers the last plan), then the table part of
    // the reconcile.
    let mut auth = Vec::new();
    let mut revoke = Vec::new();
    let mut z = zone.clone();
    let mut planner = Planner::default();
    planner.plan(&z, &cfg);
    for _ in 0..changes {
        for (list, next) in [
            (&mut auth, with_probe(z.clone())),
            (&mut revoke, {
                let mut r = z.clone();
                r.generation += 2;
                r
            }),
        ] {
            let (t, c, k) = (Instant::now(), cpu_ms(), children_cpu_ms());
            let p = planner.plan(&next, &cfg);
            let planned = t.elapsed();
            let done = rt.block_on(reconcile_nft(&net, &p)).unwrap();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            list.push([
                ms(t.elapsed()),
                ms(planned),
                ms(t.elapsed() - planned),
                cpu_ms() - c + children_cpu_ms() - k,
            ]);
            assert!(
                done.len() == 1 && done[0].starts_with("update nft elements"),
                "{done:?}"
            );
            z.generation = next.generation;
            let allowed = next.segments[0].rules.len() > zone.segments[0].rules.len();
            assert_eq!(passes(&src, &dst), allowed, "enforced at once");
        }
    }
    let stats = |v: &mut Vec<[f64; 4]>| {
        v.sort_by(|a, b| a[0].partial_cmp(&b[0]).unwrap());
        let m = v[v.len() / 2];
        let cpu = v.iter().map(|x| x[3]).fold(f64::MAX, f64::min);
        format!(
            "median {:.1} ms (plan {:.1}, nft transaction {:.1}), \
             CPU {cpu:.1} ms (least), max {:.1} ms",
            m[0],
            m[1],
            m[2],
            v[v.len() - 1][0]
        )
    };
    println!("rule change to enforcement (plan + one nft transaction), {changes} each:");
    println!("  authorize: {}", stats(&mut auth));
    println!("  revoke:    {}", stats(&mut revoke));
    // After a restart the CC knows nothing of the loaded table: it reads
    // the state first, and replaces the whole table (one transaction).
    let cold = LinuxHostNet::new(&cfg);
    let t = Instant::now();
    let done = rt
        .block_on(reconcile_nft(
            &cold,
            &planner.plan(&with_probe(z.clone()), &cfg),
        ))
        .unwrap();
    assert!(done.len() == 1, "{done:?}");
    println!(
        "  first change after a restart (state read, whole table replaced): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(passes(&src, &dst), "enforced after the reload");

    // Per-packet cost.
    println!("per-packet cost of the forward path, UDP 64 B, best of {runs} x {packets}:");
    rt.block_on(net.delete_nft()).unwrap();
    let (base, d) = best(runs, &src, &dst, packets);
    println!(
        "  no ruleset:                     {base:7.0} ns/packet (delivered {:.0}%)",
        d * 100.0
    );
    let report = |name: &str, (ns, d): (f64, f64)| {
        println!(
            "  {name:<31} {ns:7.0} ns/packet, +{:.0} ns over none (delivered {:.0}%)",
            ns - base,
            d * 100.0
        );
    };
    for (g, r) in [(groups, rules), (10, 100)] {
        let z = with_probe(scale_zone(g, r));
        let nft = plan(&z, &cfg).nft.unwrap();
        rt.block_on(net.apply_nft(&nft)).unwrap();
        report(
            &format!("ironbark sets, {r} rules:"),
            best(runs, &src, &dst, packets),
        );
        rt.block_on(net.delete_nft()).unwrap();
    }
    let restore = ["iptables-legacy-restore", "iptables-nft-restore"]
        .into_iter()
        .find(|b| {
            Command::new("ip")
                .args(["netns", "exec", &rtr, b, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    match restore {
        None => println!("  (no iptables-restore: linear comparison skipped)"),
        Some(bin) => {
            for (g, r) in [(groups, rules), (10, 100)] {
                let z = with_probe(scale_zone(g, r));
                let (text, n) = iptables_rules(&z);
                sh_in(&text, &["ip", "netns", "exec", &rtr, bin]);
                report(
                    &format!("{bin} linear, {n} rules:"),
                    best(runs, &src, &dst, packets),
                );
                sh_in(
                    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
                    &["ip", "netns", "exec", &rtr, bin],
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&state);
}
