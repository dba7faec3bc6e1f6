//! `completions` and `man`: shell completion scripts and man pages, both generated from the
//! clap definition so they never drift from `--help`.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub fn completions(args: &CompletionsArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "llmbatch", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(0)
}

/// The top page on stdout, or every page (one per subcommand, git style) into a directory.
pub fn man(args: &ManArgs) -> Result<u8> {
    let cmd = Cli::command();
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().lock().write_all(&out)?;
        }
    }
    Ok(0)
}
