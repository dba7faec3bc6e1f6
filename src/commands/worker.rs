//! The hidden `worker`: one HTTP call for an attempt, in a child process the runner can kill.

use anyhow::Result;

pub fn run() -> Result<u8> {
    crate::backends::worker_main()
}
