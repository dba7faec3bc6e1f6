//! Integration tests: the real binary on a temp database, real child processes and signals,
//! a real HTTP server on 127.0.0.1. One test binary; one module per area.

mod common;
mod core;
mod fake_server;
mod formats;
mod grade;
mod grade_http;
mod hostile;
mod http;
mod page;
mod postgres;
mod promises;
mod recovery;
mod reports;
mod store;
mod stream;
mod sweeps;
mod throttle;
