//! The daemon's control protocol over its Unix socket: typed requests and typed answers in
//! length-prefixed frames.
//!
//! A client sends one request frame (`q`, JSON of an [`Envelope`]); the daemon answers with
//! frames `tag:u8 len:u32le bytes`: `o` stdout bytes, `e` stderr bytes, `v` a build event
//! (JSON), `r` a typed reply (JSON), and last `x` the exit code (i32le). The daemon runs the
//! same command code a command without a daemon runs, against the store it owns; the request is
//! the parsed command (never argv parsed again).
//!
//! Frames are read with a size cap: a peer can make the reader allocate at most [`MAX_FRAME`].

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vorpalfs_builder::Event;
use vorpalfs_store::{CacheStats, Digest, Traffic};

use crate::args::{BuildArgs, InspectArgs, StoreCommand};

/// The largest frame accepted.
pub const MAX_FRAME: usize = 16 << 20;

/// A request and the caller's context (relative paths are the caller's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub cwd: PathBuf,
    pub json: bool,
    pub request: Request,
}

/// What a client asks of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Store(StoreCommand),
    Push(Vec<String>),
    Pull(Vec<String>),
    Profile(crate::args::ProfileCommand),
    Gc,
    Build(BuildArgs),
    Inspect(InspectArgs),
    /// The newest build of an artifact name or alias (for `run`): a [`Reply::Artifact`].
    Artifact(String),
    /// A [`Reply::Status`].
    Status,
    /// Unmount and exit.
    Shutdown,
}

/// A typed answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Status(Box<Status>),
    Artifact(ArtifactInfo),
}

/// Where an artifact's newest build is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub name: String,
    pub digest: Digest,
    pub path: PathBuf,
    /// Its output tree, if it was built.
    pub output: Option<Digest>,
}

/// The daemon's state, for `vorpalfs status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The daemon's vorpalfs version (empty from a daemon older than the field).
    #[serde(default)]
    pub version: String,
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    pub uptime_seconds: u64,
    pub s3: Option<S3Status>,
    pub chunk_cache: ChunkCache,
    pub fs: FsCounters,
    /// The roots served that came from S3, and the trusted key that signed each.
    #[serde(default)]
    pub from_s3: Vec<FromS3>,
    /// What the index holds in memory (memtables, table readers, block cache).
    #[serde(default)]
    pub index_memory: vorpalfs_store::IndexMemory,
    /// Access profiles recorded here and used from S3.
    #[serde(default)]
    pub profiles: vorpalfs_store::ProfileStats,
}

/// A root found in S3 and who vouched for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FromS3 {
    pub name: String,
    pub tree: Digest,
    /// The accepted key that signed it (`None`: taken unsigned, as this host allows).
    pub signed_by: Option<String>,
    /// What S3 sent for it here: profile, prefetch, demand misses, GETs and bytes.
    #[serde(default)]
    pub stats: vorpalfs_store::RootStats,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct S3Status {
    pub url: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub cache_bytes: u64,
    pub cache_budget: Option<u64>,
    /// The key this host signs with, the keys it accepts, and whether a signature is required.
    pub signing_key: Option<String>,
    pub trusted_keys: Vec<String>,
    pub signatures_required: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkCache {
    pub bytes: u64,
    pub budget: u64,
    pub hits: u64,
    pub misses: u64,
    /// Bytes fetched from S3 and checked (reads, readahead, neighbours, prefetch).
    #[serde(default)]
    pub fetched_bytes: u64,
    /// GETs sent to fetch small roots whole on first use.
    #[serde(default)]
    pub prefetch_gets: u64,
}

impl From<CacheStats> for ChunkCache {
    fn from(c: CacheStats) -> ChunkCache {
        ChunkCache {
            bytes: c.chunk_cache_bytes,
            budget: c.chunk_cache_budget,
            hits: c.chunk_hits,
            misses: c.chunk_misses,
            fetched_bytes: c.fetched_bytes,
            prefetch_gets: c.prefetch_gets,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FsCounters {
    pub lookups: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub reads_deferred: u64,
    pub read_errors: u64,
    pub inodes: u64,
}

/// One frame.
#[derive(Debug)]
pub enum Frame {
    Request(Envelope),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Event(Event),
    Reply(Reply),
    Exit(i32),
}

const REQUEST: u8 = b'q';
const STDOUT: u8 = b'o';
const STDERR: u8 = b'e';
const EVENT: u8 = b'v';
const REPLY: u8 = b'r';
const EXIT: u8 = b'x';

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed frame: {what}"))
}

fn write_raw(w: &mut impl Write, tag: u8, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(data.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    fn json<T: Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).expect("frame payloads serialize")
    }
    match f {
        Frame::Request(e) => write_raw(w, REQUEST, &json(e)),
        Frame::Stdout(b) => write_raw(w, STDOUT, b),
        Frame::Stderr(b) => write_raw(w, STDERR, b),
        Frame::Event(e) => write_raw(w, EVENT, &json(e)),
        Frame::Reply(r) => write_raw(w, REPLY, &json(r)),
        Frame::Exit(c) => write_raw(w, EXIT, &c.to_le_bytes()),
    }
}

/// Decodes one frame's payload.
pub fn decode(tag: u8, data: Vec<u8>) -> io::Result<Frame> {
    Ok(match tag {
        REQUEST => Frame::Request(serde_json::from_slice(&data).map_err(bad)?),
        STDOUT => Frame::Stdout(data),
        STDERR => Frame::Stderr(data),
        EVENT => Frame::Event(serde_json::from_slice(&data).map_err(bad)?),
        REPLY => Frame::Reply(serde_json::from_slice(&data).map_err(bad)?),
        EXIT => Frame::Exit(i32::from_le_bytes(data.as_slice().try_into().map_err(|_| bad("exit code"))?)),
        t => return Err(bad(format!("unknown tag {t:#x}"))),
    })
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[1..].try_into().unwrap()) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("{len} bytes (at most {MAX_FRAME})")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    decode(head[0], data).map(Some)
}

/// A `Write` that sends what is written as frames of one kind (stdout or stderr).
pub struct FrameWriter<W: Write> {
    pub out: W,
    pub stderr: bool,
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_raw(&mut self.out, if self.stderr { STDERR } else { STDOUT }, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) -> Frame {
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        let mut r = &buf[..];
        let back = read_frame(&mut r).unwrap().unwrap();
        assert!(read_frame(&mut r).unwrap().is_none(), "one frame, then a clean end");
        back
    }

    #[test]
    fn every_frame_round_trips() {
        let req = Envelope {
            cwd: "/work".into(),
            json: true,
            request: Request::Store(StoreCommand::Add { dir: "d".into(), name: Some("n".into()) }),
        };
        let Frame::Request(back) = round_trip(Frame::Request(req)) else { panic!() };
        assert!(back.json && back.cwd == std::path::Path::new("/work"));
        assert!(
            matches!(back.request, Request::Store(StoreCommand::Add { ref name, .. }) if name.as_deref() == Some("n"))
        );
        assert!(matches!(round_trip(Frame::Stdout(b"out".to_vec())), Frame::Stdout(b) if b == b"out"));
        assert!(matches!(round_trip(Frame::Stderr(vec![0, 255])), Frame::Stderr(b) if b == [0, 255]));
        assert!(matches!(round_trip(Frame::Exit(-3)), Frame::Exit(-3)));
        let ev = Event::Log { name: "a".into(), line: "x".into() };
        assert!(matches!(round_trip(Frame::Event(ev.clone())), Frame::Event(e) if e == ev));
        let info = ArtifactInfo { name: "a".into(), digest: Digest([1; 32]), path: "/p".into(), output: None };
        assert!(
            matches!(round_trip(Frame::Reply(Reply::Artifact(info.clone()))), Frame::Reply(Reply::Artifact(i)) if i == info)
        );
        // The frame writer sends its bytes as stdout or stderr frames.
        let mut buf = Vec::new();
        write!(FrameWriter { out: &mut buf, stderr: true }, "hi").unwrap();
        assert!(matches!(read_frame(&mut &buf[..]).unwrap(), Some(Frame::Stderr(b)) if b == b"hi"));
    }

    proptest::proptest! {
        // The fuzz target `daemon_frame`'s body, on stable: any bytes from a peer decode to
        // frames or an error, never a panic.
        #[test]
        fn any_bytes_from_a_peer_are_frames_or_an_error(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), tag in proptest::sample::select(b"qoevrxz".to_vec())) {
            let mut r = &data[..];
            while let Ok(Some(_)) = read_frame(&mut r) {}
            let framed = [&[tag][..], &(data.len() as u32).to_le_bytes(), &data].concat();
            let _ = read_frame(&mut &framed[..]);
        }
    }

    #[test]
    fn oversized_unknown_and_truncated_frames_are_errors() {
        let mut head = vec![b'o'];
        head.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(read_frame(&mut &head[..]).unwrap_err().to_string().contains("at most"));
        assert!(read_frame(&mut &[b'z', 0, 0, 0, 0][..]).unwrap_err().to_string().contains("unknown tag"));
        assert!(read_frame(&mut &[b'o', 5, 0, 0, 0, 1][..]).is_err());
        assert!(read_frame(&mut &[b'q', 2, 0, 0, 0, b'{', b'}'][..]).is_err());
    }
}
