//! Deciding on a worker thread fed by crossbeam-channel, with the decisions sent back: what moving
//! deciding off the I/O task would cost. Shared by `benches/pipeline.rs` (time) and
//! `examples/decide_where.rs` (instructions and system calls).
#![allow(dead_code)]

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use edgefilter::filter::{self, Decision};

/// Decides a batch on the calling thread, as the module does.
pub fn decide_inline(batch: &[Bytes]) -> Vec<Decision> {
    batch.iter().map(|m| filter::decide(m, 25.0)).collect()
}

/// A thread that decides the batches sent to it.
pub struct Worker {
    to_worker: Sender<Vec<Bytes>>,
    from_worker: Receiver<Vec<Decision>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    pub fn spawn() -> Worker {
        let (to_worker, worker_rx) = crossbeam_channel::bounded::<Vec<Bytes>>(16);
        let (to_io, from_worker) = crossbeam_channel::bounded::<Vec<Decision>>(16);
        let thread = std::thread::spawn(move || {
            for batch in worker_rx {
                if to_io.send(decide_inline(&batch)).is_err() {
                    break;
                }
            }
        });
        Worker { to_worker, from_worker, thread }
    }

    /// Hands a batch over and waits for its decisions.
    pub fn decide(&self, batch: Vec<Bytes>) -> Vec<Decision> {
        self.to_worker.send(batch).unwrap();
        self.from_worker.recv().unwrap()
    }

    pub fn stop(self) {
        drop(self.to_worker);
        self.thread.join().unwrap();
    }
}
