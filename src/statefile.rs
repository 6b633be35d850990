//! The aggregates' state file in `EDGEFILTER_STATE_DIR`: read once at start, replaced atomically
//! by each checkpoint the session core asks for ([`crate::session::Action::Save`]).
//!
//! A write goes to a temporary file beside it, is flushed to the device (`fsync`), renamed over
//! the old file, and the directory is flushed too: a crash or power cut leaves the old checkpoint
//! or the new one, never a torn one (and a torn one would fail its checksum and be ignored). The
//! writes run on a thread of their own, so a slow flash card never stalls the data path; when
//! checkpoints come faster than the card takes them, only the newest is written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};

use log::warn;

use crate::stats::Stats;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "aggregates.checkpoint";

/// The state file's bytes, None when there is none.
pub fn read(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the state file with `bytes`, atomically (see the module docs).
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&temporary)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&temporary, dir.join(FILE_NAME))?;
    // The rename itself is durable once the directory is flushed.
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// The writer thread.
pub struct Saver {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Saver {
    pub fn new(dir: PathBuf, stats: Arc<Stats>) -> Saver {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new().name("edgefilter-state".into()).spawn(move || {
            while let Ok(mut bytes) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    bytes = newer;
                }
                match write(&dir, &bytes) {
                    Ok(()) => stats.checkpoints_saved.fetch_add(1, Relaxed),
                    Err(e) => {
                        warn!("cannot save the aggregates' checkpoint in {}: {e}", dir.display());
                        stats.checkpoint_failures.fetch_add(1, Relaxed)
                    }
                };
            }
        });
        match thread {
            Ok(thread) => Saver { tx: Some(tx), thread: Some(thread) },
            Err(e) => {
                warn!("cannot start the state writer: {e}; checkpoints are not saved");
                Saver { tx: None, thread: None }
            }
        }
    }

    /// Queues a checkpoint.
    pub fn save(&self, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(bytes);
        }
    }

    /// Writes what is queued, then returns.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
