//! `cargo run -p ironbark-testimage --example build_test_image -- OUT [CACHE]`
//! builds the test guest by hand (the `ironbark image build-test` command does
//! the same from the main binary).

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: build_test_image OUT [CACHE]");
        std::process::exit(2);
    };
    let cache = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| out.join("cache"));
    let t = std::time::Instant::now();
    match ironbark_testimage::build_test_image(&out, &cache) {
        Ok(img) => println!("{img:?} in {:.1?}", t.elapsed()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
