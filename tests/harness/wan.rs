//! A wide-area link in front of a TCP server: each request waits a round trip's latency and
//! each connection moves at most `rate` bytes a second, as S3 does from a host in another
//! place (10–30 ms to the first byte, ~100 MB/s a connection). Counts connections, requests
//! and bytes. The tests put it in front of the S3 server; `vorpalfs-wan-proxy` (bin) is the
//! same link for `scripts/bench`.
//!
//! A request is a burst of client bytes after the server has answered the previous one (or the
//! first bytes of a connection); it is held back `latency` before it is forwarded. Opening a
//! connection costs one more `latency` (the TCP handshake). Bytes in both directions are paced
//! to `rate` per connection. A `Link` of zeros forwards as is.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The link's properties: zero latency and a zero rate disable each.
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub latency: Duration,
    /// Bytes per second per connection; 0: unbounded.
    pub rate: u64,
}

impl Link {
    /// The link the WAN issue measures against: 20 ms, 100 MB/s a connection.
    pub fn wan() -> Link {
        Link { latency: Duration::from_millis(20), rate: 100_000_000 }
    }
}

/// What went through the link.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.connections), l(&self.requests), l(&self.bytes_up), l(&self.bytes_down))
    }
}

/// A running link: forwards connections to `upstream` until [`Proxy::stop`].
pub struct Proxy {
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    pub counters: Arc<Counters>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Serves `listener`, forwarding to `127.0.0.1:upstream` through `link`.
    pub fn start(listener: TcpListener, upstream: u16, link: Link, counters: Arc<Counters>) -> Proxy {
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2, counters2) = (up.clone(), conns.clone(), counters.clone());
        let accept = std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            while up2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (conns, counters) = (conns2.clone(), counters2.clone());
                        std::thread::spawn(move || connect(client, upstream, link, &conns, counters));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            // Dropping the listener closes the port: connections are refused.
        });
        Proxy { up, conns, counters, accept: Some(accept) }
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn connect(client: TcpStream, upstream: u16, link: Link, conns: &Mutex<Vec<TcpStream>>, counters: Arc<Counters>) {
    let _ = client.set_nonblocking(false);
    std::thread::sleep(link.latency);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    {
        let mut c = conns.lock().unwrap();
        c.push(client.try_clone().unwrap());
        c.push(server.try_clone().unwrap());
    }
    // Set when the server has sent bytes since the client's last burst: the client's next
    // bytes are a new request.
    let answered = Arc::new(AtomicBool::new(true));
    let (a2, c2) = (answered.clone(), counters.clone());
    let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        pump(client2, server2, link.rate, |n| {
            c2.bytes_up.fetch_add(n, Ordering::Relaxed);
            if a2.swap(false, Ordering::SeqCst) {
                c2.requests.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(link.latency);
            }
        })
    });
    pump(server, client, link.rate, |n| {
        counters.bytes_down.fetch_add(n, Ordering::Relaxed);
        answered.store(true, Ordering::SeqCst);
    });
    let _ = up.join();
}

/// Copies `from` to `to` at most `rate` bytes a second, calling `before` with each read's size
/// before it is written.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: u64, mut before: impl FnMut(u64)) {
    const PACING_SLACK: Duration = Duration::from_millis(2);
    let mut buf = vec![0u8; 256 << 10];
    // When the bytes sent so far may all have left at `rate`.
    let mut free_at = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        before(n as u64);
        if let Some(nanos) = (n as u64 * 1_000_000_000).checked_div(rate) {
            let now = Instant::now();
            free_at = free_at.max(now) + Duration::from_nanos(nanos);
            // Sleeping for every read would add the timer's overhead each time (the link ran at
            // 40% of its rate): the debt is paid in sleeps of a few milliseconds instead, so
            // the average rate is the cap and no burst exceeds it by more than that.
            if free_at > now + PACING_SLACK {
                std::thread::sleep(free_at - now);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
