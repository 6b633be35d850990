//! Where deciding should run, counted rather than timed: decides N batches of BATCH sensor
//! messages either on the calling thread (`inline`, what the module does) or on a worker thread
//! fed by crossbeam-channel with the decisions sent back (`worker`, what a worker pool would
//! cost). `scripts/decide-where.sh` runs it under `strace -f -c` on x86 and counts its ARM
//! instructions and system calls under qemu on armv7.
//!
//!     decide_where MODE BATCH N      MODE: inline | worker

use std::hint::black_box;

use bytes::Bytes;
use edgefilter::filter::{self, Decision};

const BODY: &[u8] = br#"{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: decide_where inline|worker BATCH N");
        std::process::exit(2);
    }
    let size: usize = args[2].parse().expect("BATCH is a count");
    let n: usize = args[3].parse().expect("N is a count");
    let batch: Vec<Bytes> = (0..size).map(|_| Bytes::from_static(BODY)).collect();
    let mut alerts = 0usize;
    match args[1].as_str() {
        "inline" => {
            for _ in 0..n {
                let decisions: Vec<Decision> = batch.iter().map(|m| filter::decide(black_box(m), 25.0)).collect();
                alerts += decisions.iter().filter(|d| **d == Decision::Alert).count();
            }
        }
        "worker" => {
            let (to_worker, worker_rx) = crossbeam_channel::bounded::<Vec<Bytes>>(16);
            let (to_io, io_rx) = crossbeam_channel::bounded::<Vec<Decision>>(16);
            let worker = std::thread::spawn(move || {
                for batch in worker_rx {
                    let decisions = batch.iter().map(|b| filter::decide(b, 25.0)).collect();
                    if to_io.send(decisions).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..n {
                to_worker.send(black_box(batch.clone())).unwrap();
                let decisions = io_rx.recv().unwrap();
                alerts += decisions.iter().filter(|d| **d == Decision::Alert).count();
            }
            drop(to_worker);
            worker.join().unwrap();
        }
        other => panic!("unknown mode {other}"),
    }
    println!("alerts: {alerts}");
}
