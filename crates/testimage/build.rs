//! Turns `IRONBARK_QEMU_TESTS=1` into the `qemu_tests` cfg, so the QEMU boot
//! tests are `#[ignore]`d unless that variable is set when building tests.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(qemu_tests)");
    println!("cargo::rerun-if-env-changed=IRONBARK_QEMU_TESTS");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("IRONBARK_QEMU_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=qemu_tests");
    }
}
