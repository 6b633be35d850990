//! Where deciding should run, counted rather than timed: decides N batches of BATCH sensor
//! messages either on the calling thread (`inline`, what the module does) or on a worker thread
//! fed by crossbeam-channel with the decisions sent back (`worker`, what a worker pool would
//! cost). `scripts/decide-where.sh` runs it under `strace -f -c` on x86 and counts its ARM
//! instructions and system calls under qemu on armv7.
//!
//!     decide_where MODE BATCH N      MODE: inline | worker

use std::hint::black_box;

use bytes::Bytes;
use edgefilter::filter::Decision;

#[path = "../benches/competitors.rs"]
mod competitors;
#[path = "../benches/worker.rs"]
mod worker;
use worker::{decide_inline, Worker};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: decide_where inline|worker BATCH N");
        std::process::exit(2);
    }
    let size: usize = args[2].parse().expect("BATCH is a count");
    let n: usize = args[3].parse().expect("N is a count");
    let batch: Vec<Bytes> = (0..size).map(|_| Bytes::from_static(competitors::SENSOR)).collect();
    let alerts_in = |decisions: Vec<Decision>| decisions.iter().filter(|d| **d == Decision::Alert).count();
    let mut alerts = 0usize;
    match args[1].as_str() {
        "inline" => {
            for _ in 0..n {
                alerts += alerts_in(decide_inline(black_box(&batch)));
            }
        }
        "worker" => {
            let worker = Worker::spawn();
            for _ in 0..n {
                alerts += alerts_in(worker.decide(black_box(batch.clone())));
            }
            worker.stop();
        }
        other => panic!("unknown mode {other}"),
    }
    println!("alerts: {alerts}");
}
