//! The messages between the host and a sandbox worker, over the worker's stdin (host → worker)
//! and stdout (worker → host). The worker moves its stdout aside before any plugin code runs, so a
//! plugin's own prints land on stderr and never in this channel.
//!
//! A frame is `u32 LE length of the rest`, `u32 LE length of the header`, the header (JSON), then
//! raw bytes (a request or response body), so bodies travel without being re-encoded.

use std::{
    borrow::Cow,
    io::{self, Read, Write},
};

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
    /// The answer to call `id`; on success the response body follows the header.
    Reply { id: u64, outcome: Outcome },
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
    let head = serde_json::to_vec(header).map_err(io::Error::other)?;
    let rest = 4 + head.len() + raw.len();
    let rest = u32::try_from(rest).map_err(|_| io::Error::other(format!("a frame of {rest} bytes is too large")))?;
    let mut frame = Vec::with_capacity(8 + head.len() + raw.len());
    frame.extend_from_slice(&rest.to_le_bytes());
    frame.extend_from_slice(&(head.len() as u32).to_le_bytes());
    frame.extend_from_slice(&head);
    frame.extend_from_slice(raw);
    out.write_all(&frame)?;
    out.flush()
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
    let rest = u64::from(u32::from_le_bytes(len));
    if rest > limit {
        return Err(FrameError::TooLarge(rest, limit));
    }
    if rest < 4 {
        return Err(FrameError::Malformed(format!("a frame of {rest} bytes has no header length")));
    }
    let mut frame = vec![0u8; rest as usize];
    input.read_exact(&mut frame).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(err),
    })?;
    let head_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if head_len > frame.len() - 4 {
        return Err(FrameError::Malformed(format!("a header of {head_len} bytes in a frame of {rest}")));
    }
    let header = serde_json::from_slice(&frame[4..4 + head_len]).map_err(|err| FrameError::Malformed(err.to_string()))?;
    frame.drain(..4 + head_len);
    Ok((header, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_with_its_raw_bytes() {
        let mut wire = Vec::new();
        let msg = WorkerMsg::Reply {
            id: 7,
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
                outcome: Outcome::Ok { status: 201, .. }
            }
        ));
        assert_eq!(raw, b"\x00body\xff");
        let (back, raw): (HostMsg, _) = read_frame(&mut input, 1 << 20).unwrap();
        assert!(matches!(back, HostMsg::Goodbye) && raw.is_empty());
        assert!(matches!(read_frame::<HostMsg>(&mut input, 1 << 20), Err(FrameError::Closed)));
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
