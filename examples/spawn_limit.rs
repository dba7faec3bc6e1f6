//! The limit `scripts/bench.sh` measures llmbatch against: THREADS threads each spawn `cat`
//! with piped stdin and stdout, write one prompt, read the answer and wait — no bookkeeping.
//! With `--commit MODE` every job also commits two SQLite transactions (a claim and a result,
//! as llmbatch does) in WAL mode with `synchronous=MODE` (NORMAL or FULL): what durable
//! bookkeeping costs at the limit, and what FULL would cost over NORMAL.
//!
//! Usage: spawn_limit PROMPTS_FILE THREADS [--commit NORMAL|FULL DB]   (prints jobs/s)

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: spawn_limit PROMPTS_FILE THREADS [--commit NORMAL|FULL DB]");
        std::process::exit(2);
    }
    let file = std::fs::File::open(&args[1]).expect("prompts file");
    let threads: usize = args[2].parse().expect("thread count");
    let db = match (args.get(3).map(String::as_str), args.get(4), args.get(5)) {
        (Some("--commit"), Some(mode), Some(path)) => Some(open(path, mode)),
        _ => None,
    };
    let db = Arc::new(db.map(Mutex::new));
    let prompts: Arc<Vec<String>> = Arc::new(
        std::io::BufReader::new(file)
            .lines()
            .map(|l| l.expect("line"))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (prompts, next, db) = (prompts.clone(), next.clone(), db.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = prompts.get(i) else { break };
                if let Some(db) = db.as_ref() {
                    let c = db.lock().expect("db");
                    c.execute(
                        "INSERT INTO log (job, started) VALUES (?1, ?2)",
                        (i as i64, started.elapsed().as_micros() as i64),
                    )
                    .expect("claim");
                }
                let mut child = Command::new("cat")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn cat");
                let mut stdin = child.stdin.take().expect("stdin");
                stdin.write_all(p.as_bytes()).expect("write");
                drop(stdin);
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .expect("stdout")
                    .read_to_string(&mut out)
                    .expect("read");
                assert!(child.wait().expect("wait").success());
                if let Some(db) = db.as_ref() {
                    let c = db.lock().expect("db");
                    c.execute(
                        "UPDATE log SET output = ?1 WHERE job = ?2",
                        (&out, i as i64),
                    )
                    .expect("result");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{:.1}", prompts.len() as f64 / secs);
}

fn open(path: &str, mode: &str) -> rusqlite::Connection {
    let _ = std::fs::remove_file(path);
    let c = rusqlite::Connection::open(path).expect("open db");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    c.pragma_update(None, "synchronous", mode)
        .expect("synchronous");
    c.execute_batch("CREATE TABLE log (job INTEGER PRIMARY KEY, started INTEGER, output TEXT)")
        .expect("schema");
    c
}
