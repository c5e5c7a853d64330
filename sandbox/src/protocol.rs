//! The messages between the host and a sandbox worker, over the worker's stdin (host → worker)
//! and stdout (worker → host). The worker moves its stdout aside before any plugin code runs, so a
//! plugin's own prints land on stderr and never in this channel.
//!
//! A frame is `u32 LE length of the rest`, `u32 LE length of the header`, the header (JSON), then
//! raw bytes (a request or response body), so bodies travel without being re-encoded.

use std::{
    borrow::Cow,
    io::{self, Read, Write},
    sync::Arc,
};

use plughost_runtime::call::{CallInput, Target};
use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes; host and worker refuse to talk across versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the host sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMsg<'a> {
    /// Confine yourself, then load `library` (`None`: only report the confinement layers).
    Load {
        protocol: u32,
        library: Option<String>,
        /// The plugin's file name, which names the worker's in-memory copy of the library (seen in
        /// `/proc/<pid>/maps` as `memfd:plughost:<file>`), so an operator can tell workers apart.
        #[serde(default)]
        module: String,
        rlimits: Rlimits,
    },
    /// Call a function; the request body follows the header.
    Call(CallHead<'a>),
    /// Exit now.
    Goodbye,
}

/// Resource limits applied before the library is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    pub address_space_bytes: u64,
    pub cpu_seconds: u64,
    pub open_files: u64,
    /// The uid (and gid) the worker takes when the host is root: one of its own.
    #[serde(default)]
    pub uid: Option<u32>,
}

/// One call, without its body; borrowed from the request on the host's side.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallHead<'a> {
    pub id: u64,
    pub function: u32,
    pub function_name: Cow<'a, str>,
    pub module: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub kwargs_json: Cow<'a, str>,
    pub query: Cow<'a, str>,
    pub headers: Cow<'a, [(String, String)]>,
    pub content_type: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
}

impl<'a> CallHead<'a> {
    /// The header of a call of `target` with `input`, borrowing from both; the pool gives it
    /// its id.
    pub fn of(target: Target<'a>, input: &'a CallInput) -> CallHead<'a> {
        CallHead {
            id: 0,
            function: target.index,
            function_name: Cow::Borrowed(target.function),
            module: Cow::Borrowed(target.module),
            method: Cow::Borrowed(&input.method),
            kwargs_json: Cow::Borrowed(&input.kwargs_json),
            query: Cow::Borrowed(&input.query),
            headers: Cow::Borrowed(&input.headers),
            content_type: Cow::Borrowed(&input.content_type),
            request_id: Cow::Borrowed(&input.request_id),
        }
    }

    /// The call this header and its `body` carried, moved out (the request id is copied; the
    /// target's names stay).
    pub fn take_input(&mut self, body: Vec<u8>) -> CallInput {
        CallInput {
            method: std::mem::take(&mut self.method).into_owned(),
            kwargs_json: std::mem::take(&mut self.kwargs_json).into_owned(),
            query: std::mem::take(&mut self.query).into_owned(),
            headers: std::mem::take(&mut self.headers).into_owned(),
            body: body.into(),
            content_type: std::mem::take(&mut self.content_type).into_owned(),
            request_id: Arc::from(self.request_id.as_ref()),
        }
    }

    /// The function this header names.
    pub fn target(&self) -> Target<'_> {
        Target {
            index: self.function,
            module: &self.module,
            function: &self.function_name,
        }
    }
}

/// What a worker sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMsg {
    /// The answer to `Load`: the layers in force and the plugin's manifest (or why it failed).
    Loaded {
        protocol: u32,
        layers: Vec<Layer>,
        manifest: Option<plugin_api::abi::Manifest>,
        error: Option<String>,
    },
    /// A log line from the plugin.
    Log { level: u8, message: String, request_id: String },
    /// The answer to call `id`; on success the response body follows the header. `micros` is
    /// how long the plugin took, as the worker measured it.
    Reply {
        id: u64,
        outcome: Outcome,
        #[serde(default)]
        micros: u64,
    },
}

/// How a call ended inside the worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        status: u16,
        content_type: String,
        headers: Vec<(String, String)>,
    },
    Err {
        kind: plugin_api::ErrorKind,
        code: String,
        message: String,
    },
}

/// One confinement layer and whether it is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub active: bool,
    /// What it enforces, or why it is unavailable.
    pub detail: String,
}

/// Writes one frame with a single `write_all`.
pub fn write_frame<T: Serialize>(out: &mut impl Write, header: &T, raw: &[u8]) -> io::Result<()> {
    out.write_all(&encode_frame(header, raw)?)?;
    out.flush()
}

/// One frame, ready to write.
pub fn encode_frame<T: Serialize>(header: &T, raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(512 + raw.len());
    frame.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut frame, header).map_err(io::Error::other)?;
    let head = frame.len() - 8;
    frame.extend_from_slice(raw);
    let rest = frame.len() - 4;
    let rest = u32::try_from(rest).map_err(|_| io::Error::other(format!("a frame of {rest} bytes is too large")))?;
    frame[..4].copy_from_slice(&rest.to_le_bytes());
    frame[4..8].copy_from_slice(&(head as u32).to_le_bytes());
    Ok(frame)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the other side closed the channel")]
    Closed,
    #[error("a frame of {0} bytes is over the {1}-byte limit")]
    TooLarge(u64, u64),
    #[error("a malformed frame: {0}")]
    Malformed(String),
    #[error("reading the channel failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame of at most `limit` bytes: its header and its raw bytes.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read, limit: u64) -> Result<(T, Vec<u8>), FrameError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(err) => return Err(err.into()),
    }
    let rest = frame_length(len, limit)?;
    let mut frame = vec![0u8; rest as usize];
    input.read_exact(&mut frame).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(err),
    })?;
    split_frame(frame)
}

/// The length a frame announces in its first four bytes, checked against `limit`.
fn frame_length(len: [u8; 4], limit: u64) -> Result<u64, FrameError> {
    let rest = u64::from(u32::from_le_bytes(len));
    if rest > limit {
        return Err(FrameError::TooLarge(rest, limit));
    }
    if rest < 4 {
        return Err(FrameError::Malformed(format!("a frame of {rest} bytes has no header length")));
    }
    Ok(rest)
}

/// A frame's rest (after its length) into its header and raw bytes.
fn split_frame<T: for<'de> Deserialize<'de>>(mut frame: Vec<u8>) -> Result<(T, Vec<u8>), FrameError> {
    let head_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if head_len > frame.len() - 4 {
        return Err(FrameError::Malformed(format!(
            "a header of {head_len} bytes in a frame of {}",
            frame.len()
        )));
    }
    let header = serde_json::from_slice(&frame[4..4 + head_len]).map_err(|err| FrameError::Malformed(err.to_string()))?;
    frame.drain(..4 + head_len);
    Ok((header, frame))
}

/// Reads one frame of at most `limit` bytes from a non-blocking channel. `buffer` keeps what
/// was read past the frame for the next one; reads ask for at least 16 KiB, so a small frame
/// usually takes one read.
pub async fn read_frame_async<T, R>(input: &mut R, buffer: &mut Vec<u8>, limit: u64) -> Result<(T, Vec<u8>), FrameError>
where
    T: for<'de> Deserialize<'de>,
    R: tokio::io::AsyncRead + Unpin,
{
    fill(input, buffer, 4).await?;
    let rest = frame_length([buffer[0], buffer[1], buffer[2], buffer[3]], limit)? as usize;
    fill(input, buffer, 4 + rest).await?;
    let frame = if buffer.len() == 4 + rest {
        // The usual case: the buffer holds this frame alone; hand it over instead of copying.
        let mut frame = std::mem::take(buffer);
        frame.drain(..4);
        frame
    } else {
        let frame = buffer[4..4 + rest].to_vec();
        buffer.drain(..4 + rest);
        frame
    };
    split_frame(frame)
}

/// Reads until `buffer` holds at least `wanted` bytes.
async fn fill<R: tokio::io::AsyncRead + Unpin>(input: &mut R, buffer: &mut Vec<u8>, wanted: usize) -> Result<(), FrameError> {
    use tokio::io::AsyncReadExt;
    while buffer.len() < wanted {
        buffer.reserve((wanted - buffer.len()).max(16 * 1024));
        if input.read_buf(buffer).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_with_its_raw_bytes() {
        let mut wire = Vec::new();
        let msg = WorkerMsg::Reply {
            id: 7,
            micros: 12,
            outcome: Outcome::Ok {
                status: 201,
                content_type: "text/plain".into(),
                headers: vec![("x-a".into(), "1".into())],
            },
        };
        write_frame(&mut wire, &msg, b"\x00body\xff").unwrap();
        write_frame(&mut wire, &HostMsg::Goodbye, b"").unwrap();
        let mut input = wire.as_slice();
        let (back, raw): (WorkerMsg, _) = read_frame(&mut input, 1 << 20).unwrap();
        assert!(matches!(
            back,
            WorkerMsg::Reply {
                id: 7,
                micros: 12,
                outcome: Outcome::Ok { status: 201, .. }
            }
        ));
        assert_eq!(raw, b"\x00body\xff");
        let (back, raw): (HostMsg, _) = read_frame(&mut input, 1 << 20).unwrap();
        assert!(matches!(back, HostMsg::Goodbye) && raw.is_empty());
        assert!(matches!(read_frame::<HostMsg>(&mut input, 1 << 20), Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn frames_read_asynchronously_as_they_were_written() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &HostMsg::Goodbye, b"first").unwrap();
        let big = vec![7u8; 100_000];
        write_frame(&mut wire, &HostMsg::Goodbye, &big).unwrap();
        write_frame(&mut wire, &HostMsg::Goodbye, b"").unwrap();
        // In pieces of 3 bytes, as a slow channel would deliver them.
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.unwrap();
        });
        let mut buffer = Vec::new();
        let (_, raw): (HostMsg, _) = read_frame_async(&mut rx, &mut buffer, 1 << 20).await.unwrap();
        assert_eq!(raw, b"first");
        let (_, raw): (HostMsg, _) = read_frame_async(&mut rx, &mut buffer, 1 << 20).await.unwrap();
        assert_eq!(raw, big);
        let (_, raw): (HostMsg, _) = read_frame_async(&mut rx, &mut buffer, 1 << 20).await.unwrap();
        assert!(raw.is_empty());
        writer.await.unwrap();
        assert!(matches!(
            read_frame_async::<HostMsg, _>(&mut rx, &mut buffer, 1 << 20).await,
            Err(FrameError::Closed)
        ));
        let mut oversized = Vec::new();
        write_frame(&mut oversized, &HostMsg::Goodbye, &big).unwrap();
        assert!(matches!(
            read_frame_async::<HostMsg, _>(&mut oversized.as_slice(), &mut Vec::new(), 1000).await,
            Err(FrameError::TooLarge(_, 1000))
        ));
    }

    #[test]
    fn oversized_truncated_and_garbled_frames_are_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &HostMsg::Goodbye, &[0u8; 100]).unwrap();
        assert!(matches!(
            read_frame::<HostMsg>(&mut wire.as_slice(), 50),
            Err(FrameError::TooLarge(_, 50))
        ));
        assert!(matches!(read_frame::<HostMsg>(&mut &wire[..20], 1000), Err(FrameError::Closed)));
        let garbled = [8u8, 0, 0, 0, 4, 0, 0, 0, b'n', b'o', b'p', b'e'];
        assert!(matches!(
            read_frame::<HostMsg>(&mut garbled.as_slice(), 1000),
            Err(FrameError::Malformed(_))
        ));
        let lying = [8u8, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            read_frame::<HostMsg>(&mut lying.as_slice(), 1000),
            Err(FrameError::Malformed(_))
        ));
    }
}
