//! The daemon's control protocol over its Unix socket.
//!
//! A client sends one JSON line: `{"op":"run","argv":[...],"cwd":"..."}` (run a command on its
//! behalf), `{"op":"status"}` or `{"op":"shutdown"}`. The daemon answers with frames
//! `tag:u8 len:u32le bytes`: `o` stdout bytes, `e` stderr bytes, `v` a build event (JSON),
//! `x` the exit code (i32le).
//! Running commands this way means every command works the same with or without a daemon: the
//! daemon parses the same argv and runs the same code against the store it owns.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Run { argv: Vec<String>, cwd: String },
    Status,
    Shutdown,
}

pub const STDOUT: u8 = b'o';
pub const STDERR: u8 = b'e';
pub const EXIT: u8 = b'x';
/// A build event (JSON), rendered by the client.
pub const EVENT: u8 = b'v';

pub fn write_frame(w: &mut impl Write, tag: u8, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(data.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[1..].try_into().unwrap()) as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// A `Write` that sends everything as frames of one tag.
pub struct FrameWriter {
    pub stream: UnixStream,
    pub tag: u8,
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_frame(&mut self.stream, self.tag, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
