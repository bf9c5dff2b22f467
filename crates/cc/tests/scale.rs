//! The data path at scale, through the bench binary with smaller numbers:
//! `ironbark-netbench` plans a zone of many groups and rules, loads it into
//! a router namespace between an internet namespace and an instance
//! namespace, and itself asserts that the probe flow is dropped before its
//! rule, passes right after the authorize and is dropped right after the
//! revoke (with traffic, not by reading the table back), and that every
//! variant of the per-packet comparison delivers. Here: 300 groups, 3,000
//! rules, and every rule change enforced within a second.
//!
//! Needs root, `ip`, `nft` and `iptables`; runs only with
//! `IRONBARK_NET_TESTS=1`.

use std::process::Command;

#[test]
fn many_groups_and_rules_are_enforced_within_a_second() {
    if std::env::var("IRONBARK_NET_TESTS").is_ok_and(|v| v == "1") {
        let out = Command::new(env!("CARGO_BIN_EXE_ironbark-netbench"))
            .envs([
                ("NET_GROUPS", "300"),
                ("NET_RULES", "3000"),
                ("PACKETS", "2000"),
                ("RUNS", "1"),
                ("CHANGES", "2"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in ["authorize", "revoke"] {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{kind}:")))
                .unwrap_or_else(|| panic!("no {kind} line in\n{text}"));
            let max: f64 = line
                .rsplit("max ")
                .next()
                .and_then(|m| m.trim_end_matches(" ms").parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
            assert!(max < 1000.0, "{line}");
        }
        assert!(text.contains("ironbark sets, 3000 rules"), "{text}");
        assert!(!text.contains("delivered 0%"), "{text}");
    } else {
        eprintln!("skipped: set IRONBARK_NET_TESTS=1 (as root) to run");
    }
}
