//! The attempt threads: started as the work needs them (up to a maximum), then kept, each
//! blocked on the job queue while idle. An idle thread costs no CPU, which matters when the
//! children it waits for share two cores with it.

use anyhow::Result;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Pool {
    tx: Sender<Job>,
    rx: Arc<Mutex<Receiver<Job>>>,
    threads: usize,
    max: usize,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        let (tx, rx) = mpsc::channel();
        Pool {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            threads: 0,
            max: max.max(1),
        }
    }

    /// Queues `job`; starts another thread when all are busy (`busy` counts this job too).
    pub fn spawn(&mut self, busy: usize, job: impl FnOnce() + Send + 'static) -> Result<()> {
        if busy > self.threads && self.threads < self.max {
            let rx = self.rx.clone();
            std::thread::Builder::new()
                .name(format!("attempt-{}", self.threads))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job, never while running it.
                    let next = rx
                        .lock()
                        .map_err(|_| ())
                        .and_then(|r| r.recv().map_err(|_| ()));
                    match next {
                        Ok(job) => job(),
                        Err(()) => break, // the coordinator is gone
                    }
                })?;
            self.threads += 1;
        }
        self.tx
            .send(Box::new(job))
            .map_err(|_| anyhow::anyhow!("attempt threads are gone"))
    }
}
