//! A real S3-compatible server for the tests: `moto_server` (PyPI, installed in a venv by
//! `scripts/test.sh`) on a free port of 127.0.0.1, behind a TCP proxy the test can cut and
//! restore (S3 "going away" without losing the in-memory bucket) and give a WAN link's
//! latency and rate ([`crate::wan`]). Killed at drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wan::{Counters, Link, Proxy};

pub const BUCKET: &str = "vorpalfs-test";

/// Where moto_server is: `VORPALFS_MOTO`, else the venv `scripts/test.sh` makes.
pub fn moto_bin() -> PathBuf {
    std::env::var_os("VORPALFS_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/vorpalfs-venv/bin/moto_server"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct S3Server {
    child: Child,
    /// moto's own port.
    pub port: u16,
    /// The proxy's port: what vorpalfs is given.
    pub proxy_port: u16,
    link: Link,
    proxy: Option<Proxy>,
    counters: Arc<Counters>,
}

impl S3Server {
    /// Starts moto, creates the bucket, and starts the proxy (no added latency).
    pub fn start() -> S3Server {
        S3Server::start_with(Link::default())
    }

    /// [`S3Server::start`] behind a proxy that adds `link`'s latency and rate cap.
    pub fn start_with(link: Link) -> S3Server {
        let bin = moto_bin();
        assert!(bin.exists(), "{} not found: run scripts/test.sh (it installs moto in a venv)", bin.display());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut s = S3Server {
            child,
            port,
            proxy_port: free_port(),
            link,
            proxy: None,
            counters: Arc::new(Counters::default()),
        };
        let (status, _) = s.http("PUT", &format!("/{BUCKET}"), b"");
        assert_eq!(status, 200, "create bucket");
        s.proxy_up();
        s
    }

    /// The `vorpalfs` arguments for this server under `prefix`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--s3".into(),
            format!("s3://{BUCKET}/{prefix}"),
            "--s3-endpoint".into(),
            format!("http://127.0.0.1:{}", self.proxy_port),
        ]
    }

    /// Environment for the AWS SDK (moto accepts any credentials).
    pub fn env() -> [(&'static str, &'static str); 3] {
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")]
    }

    /// Starts forwarding connections to moto (again).
    pub fn proxy_up(&mut self) {
        let listener = {
            let t = Instant::now();
            loop {
                match TcpListener::bind(("127.0.0.1", self.proxy_port)) {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(t.elapsed() < Duration::from_secs(10), "cannot rebind the proxy: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        };
        self.proxy = Some(Proxy::start(listener, self.port, self.link, self.counters.clone()));
    }

    /// Cuts S3 off: the port refuses connections and open ones are closed.
    pub fn proxy_down(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.stop();
        }
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.proxy_port)).is_ok() {
            assert!(t.elapsed() < Duration::from_secs(5), "proxy still accepting");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What went through the proxy so far.
    pub fn traffic(&self) -> &Counters {
        &self.counters
    }

    /// A plain HTTP/1.1 request straight to moto (unsigned; moto does not check): (status, body).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response") + 4;
        let head = String::from_utf8_lossy(&resp[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = resp[head_end..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    /// Keys under a prefix of the bucket.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.http("GET", &format!("/{BUCKET}?list-type=2&prefix={prefix}"), b"");
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let mut keys: Vec<String> =
            text.split("<Key>").skip(1).map(|s| s.split("</Key>").next().unwrap().to_string()).collect();
        keys.sort();
        keys
    }

    /// The size of an object, from a listing.
    pub fn size(&self, key: &str) -> u64 {
        let (status, body) = self.http("GET", &format!("/{BUCKET}?list-type=2&prefix={key}"), b"");
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        text.split("<Size>")
            .nth(1)
            .and_then(|s| s.split("</Size>").next())
            .and_then(|s| s.parse().ok())
            .expect("object listed")
    }

    /// Reads an object as an authenticated client (moto refuses anonymous reads of objects
    /// others own), with boto3 from moto's venv.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        self.boto3(&format!("download_file({BUCKET:?}, {key:?}, {:?})", tmp.path().to_str().unwrap()), key);
        std::fs::read(tmp.path()).unwrap()
    }

    /// Overwrites an object as an authenticated client (moto refuses anonymous writes to
    /// objects others own), with boto3 from moto's venv.
    pub fn put(&self, key: &str, body: &[u8]) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), body).unwrap();
        self.boto3(&format!("upload_file({:?}, {BUCKET:?}, {key:?})", tmp.path().to_str().unwrap()), key);
    }

    /// Calls `call` on a boto3 S3 client of this server.
    fn boto3(&self, call: &str, key: &str) {
        let python = moto_bin().with_file_name("python3");
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').{call}",
            self.port,
        );
        let out = Command::new(python).arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "{call} ({key}): {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.proxy.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
