//! `vorpalfs-wan-proxy LISTEN_PORT UPSTREAM_PORT [LATENCY_MS [RATE_MB_PER_S]]`: a WAN link in
//! front of a server on 127.0.0.1 (defaults 20 ms and 100 MB/s a connection; 0 disables each),
//! for `scripts/bench`. Writes `connections requests bytes_up bytes_down` to stdout whenever
//! a line arrives on stdin, and exits at the end of stdin.

use std::io::BufRead;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use vorpalfs_tests::wan::{Counters, Link, Proxy};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i).map_or(default, |a| a.parse().unwrap_or_else(|_| panic!("not a number: {a}")))
    };
    if args.len() < 2 {
        eprintln!("usage: vorpalfs-wan-proxy LISTEN_PORT UPSTREAM_PORT [LATENCY_MS [RATE_MB_PER_S]]");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(("127.0.0.1", arg(0, 0) as u16)).expect("bind the listening port");
    let link = Link { latency: Duration::from_millis(arg(2, 20)), rate: arg(3, 100) * 1_000_000 };
    let counters = Arc::new(Counters::default());
    let _proxy = Proxy::start(listener, arg(1, 0) as u16, link, counters.clone());
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let (c, r, up, down) = counters.snapshot();
        println!("{c} {r} {up} {down}");
    }
}
