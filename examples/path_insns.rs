//! The module's in-process path for one sensor message (`benches/path.rs`), run N times up to a
//! stage, for `tools/arm-insn-count` to count: what each step costs on armv7 apart from the
//! event loop and the system calls. `scripts/arm-path-insns.sh` runs every stage.
//!
//!     path_insns STAGE N      STAGE: decode | classify | decide | topic | all

use std::hint::black_box;

use bytes::BytesMut;
use edgefilter::delivery::Delivery;
use edgefilter::topic::ModuleId;

#[path = "../benches/competitors.rs"]
mod competitors;
#[path = "../benches/path.rs"]
mod path;
use path::{path, wire, Scratch, Stage};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stage = match args.get(1).map(String::as_str) {
        Some("decode") => Stage::Decode,
        Some("classify") => Stage::Classify,
        Some("decide") => Stage::Decide,
        Some("topic") => Stage::Topic,
        Some("all") => Stage::All,
        _ => {
            eprintln!("usage: path_insns decode|classify|decide|topic|all N");
            std::process::exit(2);
        }
    };
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let id = ModuleId::new("dev", "filter");
    let input = wire(1, competitors::SENSOR);
    let (mut delivery, mut tx, mut scratch) = (Delivery::new(), BytesMut::with_capacity(1 << 16), Scratch::default());
    let mut total = 0;
    for _ in 0..n {
        total += path(&id, black_box(input.clone()), &mut delivery, &mut tx, &mut scratch, stage);
    }
    println!("{total}");
}
