//! Prints the optimiser's report for zoo models: `cargo run --release -p
//! kiln-passes --example zoo_report -- mobile_former_26m`.

use kiln_frontends::zoo::{ZooOptions, build};
use kiln_passes::{OptOptions, optimize};

fn main() {
    for name in std::env::args().skip(1) {
        let m = match build(&name, &ZooOptions::default()) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        match optimize(&m, &OptOptions::default()) {
            Ok((_, r)) => println!("== {name}\n{}", r.explain()),
            Err(e) => eprintln!("{name}: {e}"),
        }
    }
}
