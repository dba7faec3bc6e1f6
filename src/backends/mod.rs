//! HTTP backends (Ollama, OpenAI-compatible), run inside the `worker` child process.

use anyhow::Result;

pub fn worker_main() -> Result<u8> {
    anyhow::bail!("HTTP backends are not available yet")
}
