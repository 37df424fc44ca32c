//! MCP protocol versions ("eras") and the HTTP header names they use.

/// Header carrying the proxy- or server-minted session id (case-insensitive on the wire).
pub const SESSION_ID_HEADER: &str = "mcp-session-id";
/// Header carrying the negotiated protocol version (2025-06-18 and later).
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// Header a client sends to resume an SSE stream.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";
/// 2026-07-28: mirrors the JSON-RPC `method` of every request.
pub const METHOD_HEADER: &str = "mcp-method";
/// 2026-07-28: mirrors `params.name` / `params.uri` of `tools/call`, `resources/read`,
/// `prompts/get`.
pub const NAME_HEADER: &str = "mcp-name";
/// 2026-07-28: prefix of headers mirroring annotated tool parameters (`Mcp-Param-{Name}`).
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";
/// 2026-07-28: `_meta` key carrying the request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// 2026-07-28: `_meta` key carrying the client's capabilities on every request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// 2026-07-28: `_meta` key carrying the client's `Implementation` (name, version).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// 2026-07-28: `_meta` key opting a request in to log messages at or above a level.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// 2026-07-28: `_meta` key of a result carrying the server's `Implementation`.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// A protocol version this proxy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// HTTP+SSE transport era.
    V2024_11_05,
    /// Streamable HTTP, JSON-RPC batches allowed.
    V2025_03_26,
    /// `MCP-Protocol-Version` header, batches removed.
    V2025_06_18,
    /// Priming events, `retry:`, 403 on a bad Origin.
    V2025_11_25,
    /// Stateless: no `initialize`, no sessions, no GET stream; per-request metadata headers.
    V2026_07_28,
}

impl ProtocolVersion {
    /// Versions the legacy Streamable HTTP front accepts, newest first.
    pub const STREAMABLE_HTTP: [ProtocolVersion; 3] = [
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_03_26,
    ];
    /// Every version known, newest first.
    pub const ALL: [ProtocolVersion; 5] = [
        ProtocolVersion::V2026_07_28,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_03_26,
        ProtocolVersion::V2024_11_05,
    ];
    /// What a Streamable HTTP server assumes when a client sends no version header.
    pub const HTTP_DEFAULT: ProtocolVersion = ProtocolVersion::V2025_03_26;

    /// The version string as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V2024_11_05 => "2024-11-05",
            ProtocolVersion::V2025_03_26 => "2025-03-26",
            ProtocolVersion::V2025_06_18 => "2025-06-18",
            ProtocolVersion::V2025_11_25 => "2025-11-25",
            ProtocolVersion::V2026_07_28 => "2026-07-28",
        }
    }

    /// Parse a wire version string; `None` for versions this proxy does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The stateless era (2026-07-28 and later).
    pub fn is_modern(self) -> bool {
        self >= ProtocolVersion::V2026_07_28
    }

    /// JSON-RPC batches are allowed only in 2025-03-26.
    pub fn allows_batches(self) -> bool {
        self == ProtocolVersion::V2025_03_26
    }

    /// Comma-separated list of the given versions, for error messages.
    pub fn list(versions: &[ProtocolVersion]) -> String {
        versions
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_rejects_unknown() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(
            ProtocolVersion::parse("2026-07-28"),
            Some(ProtocolVersion::V2026_07_28)
        );
        assert!(ProtocolVersion::V2026_07_28.is_modern());
        assert!(!ProtocolVersion::V2025_11_25.is_modern());
        assert_eq!(ProtocolVersion::parse("2099-01-01"), None);
        assert_eq!(ProtocolVersion::parse(""), None);
        assert!(ProtocolVersion::V2025_03_26.allows_batches());
        assert!(!ProtocolVersion::V2025_06_18.allows_batches());
    }
}
