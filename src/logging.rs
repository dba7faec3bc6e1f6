//! Logs to stderr (and `--log-file`), drawn around the progress bars rather than through them.

use indicatif::MultiProgress;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use crate::cli::Cli;

static BARS: OnceLock<Mutex<Option<MultiProgress>>> = OnceLock::new();

/// Registers the progress bars that log lines must be printed around (None to clear).
pub fn set_bars(bars: Option<MultiProgress>) {
    let slot = BARS.get_or_init(|| Mutex::new(None));
    if let Ok(mut s) = slot.lock() {
        *s = bars;
    }
}

fn bars() -> Option<MultiProgress> {
    BARS.get()?.lock().ok()?.clone()
}

struct Bridge {
    inner: env_logger::Logger,
    file: Option<Mutex<std::fs::File>>,
    /// -q quiets stderr, not the log file: a cron job's log keeps its info lines.
    stderr_level: log::LevelFilter,
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(
                    f,
                    "{} {:<5} [{}] {}",
                    crate::timefmt::iso_time_ms(crate::util::now_ms()),
                    record.level(),
                    std::process::id(),
                    record.args()
                );
            }
        }
        if record.level() > self.stderr_level {
            return;
        }
        match bars() {
            Some(bars) => {
                let _ = bars.println(format!("llmbatch: {}", record.args()));
            }
            None => self.inner.log(record),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Logs go to stderr (and `--log-file`); stdout carries only results.
pub fn init(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let file = cli.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("llmbatch: cannot open log file {}: {e}", p.display()))
            .ok()
    });
    let stderr_level = level;
    let level = if file.is_some() {
        level.max(log::LevelFilter::Info)
    } else {
        level
    };
    let file = file.map(Mutex::new);
    let mut builder = env_logger::Builder::new();
    builder
        .filter_module("llmbatch", level)
        .filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(|buf, record| writeln!(buf, "llmbatch: {}", record.args()));
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Bridge {
        inner,
        file,
        stderr_level,
    }))
    .is_ok()
    {
        log::set_max_level(max);
    }
}
