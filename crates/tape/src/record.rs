//! The lines of a tape: one header, one line per frame, and an optional end line.
//! See `docs/tape-format.md` for the format as a document.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The `format` value of every tape header.
pub const FORMAT: &str = "shadowcat-tape";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// Which way a recorded frame travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dir {
    /// Client → server.
    #[serde(rename = "c2s")]
    ClientToServer,
    /// Server → client.
    #[serde(rename = "s2c")]
    ServerToClient,
}

impl Dir {
    /// `c2s` or `s2c`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::ClientToServer => "c2s",
            Dir::ServerToClient => "s2c",
        }
    }

    /// The other direction.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::ClientToServer => Dir::ServerToClient,
            Dir::ServerToClient => Dir::ClientToServer,
        }
    }
}

/// First line of a tape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When recording started, RFC 3339 UTC with milliseconds.
    pub created: String,
    /// Version of the Shadowcat that wrote the tape.
    pub shadowcat: String,
    /// The mode that recorded it: `forward-stdio`, `forward-http`, …
    pub mode: String,
    /// The front (client side) transport: `stdio` or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<String>,
    /// Where the server was (command line or URL, credentials redacted).
    pub upstream: String,
    /// Headers configured for the upstream (secret values redacted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_headers: BTreeMap<String, String>,
    /// The negotiated protocol version when known at the start (usually not: see the end line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The session when the tape holds exactly one (directory recording).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Header {
    /// A header for a tape being started now.
    pub fn new(mode: &str, upstream: &str, created: String) -> Header {
        Header {
            format: FORMAT.to_string(),
            version: VERSION,
            created,
            shadowcat: String::new(),
            mode: mode.to_string(),
            front: None,
            upstream: upstream.to_string(),
            upstream_headers: BTreeMap::new(),
            protocol: None,
            session: None,
        }
    }
}

/// Transport details of a frame, when the front or upstream provides them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transport {
    /// HTTP method of the request that carried the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Client → server: the URL the client sent the request to (secret query parameters
    /// redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP status of the response that carried the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Selected headers (secret values redacted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// SSE event id the frame was sent or received with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_id: Option<String>,
}

impl Transport {
    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.url.is_none()
            && self.status.is_none()
            && self.headers.is_empty()
            && self.sse_id.is_none()
    }
}

/// One recorded JSON-RPC message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Microseconds since the tape started.
    pub t_us: u64,
    /// Direction of travel.
    pub dir: Dir,
    /// The proxy's session id.
    pub session: String,
    /// Transport details, when known.
    #[serde(default, skip_serializing_if = "Transport::is_empty")]
    pub transport: Transport,
    /// Set when the message did not simply pass through: `answered-by-hook` (a rule or hook
    /// answered it; it never reached the other side) or `hook-answer` (that answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The JSON-RPC message as it travelled (secrets redacted).
    pub message: Box<RawValue>,
}

/// Last line of a tape that was closed properly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Microseconds since the tape started.
    pub t_us: u64,
    /// Frames written.
    pub frames: u64,
    /// Frames the recorder had to drop because the disk was slower than the traffic.
    #[serde(default)]
    pub dropped: u64,
    /// The protocol version negotiated by `initialize`, when seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Any line of a tape, tagged by `type`.
#[derive(Debug, Clone)]
pub enum Line {
    /// `{"type":"header",…}`
    Header(Header),
    /// `{"type":"frame",…}`
    Frame(FrameRecord),
    /// `{"type":"end",…}`
    End(End),
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
}

impl Line {
    /// The line as one line of JSON (no newline). `type` comes first, for people reading tapes.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        let (ty, body) = match self {
            Line::Header(h) => ("header", serde_json::to_string(h)),
            Line::Frame(f) => ("frame", serde_json::to_string(f)),
            Line::End(e) => ("end", serde_json::to_string(e)),
        };
        let body = body.unwrap_or_default();
        let rest = body.strip_prefix('{').unwrap_or("}");
        if rest == "}" {
            format!("{{\"type\":\"{ty}\"}}")
        } else {
            format!("{{\"type\":\"{ty}\",{rest}")
        }
    }

    /// Parse one line of a tape.
    pub fn parse(text: &str) -> Result<Line, String> {
        let t: TypeOnly<'_> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        match t.ty.as_deref() {
            Some("header") => serde_json::from_str(text)
                .map(Line::Header)
                .map_err(|e| format!("bad header: {e}")),
            Some("frame") => serde_json::from_str(text)
                .map(Line::Frame)
                .map_err(|e| format!("bad frame line: {e}")),
            Some("end") => serde_json::from_str(text)
                .map(Line::End)
                .map_err(|e| format!("bad end line: {e}")),
            Some(other) => Err(format!("unknown line type `{other}`")),
            None => Err("the line has no `type`".to_string()),
        }
    }
}
