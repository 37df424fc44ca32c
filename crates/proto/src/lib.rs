//! Wire formats for Shadowcat, with no I/O.
//!
//! * [`frame`]: one JSON-RPC message (or 2025-03-26 batch) as raw bytes plus an envelope parsed once.
//! * [`era`]: MCP protocol versions and the HTTP header names each era uses.
//! * [`lines`]: newline-delimited stdio framing with a size limit.
//! * [`sse`]: the Server-Sent Events codec (decode and encode, pass-through of raw event bytes).
//! * [`error`]: JSON-RPC error codes and builders for the error frames the proxy itself emits.

pub mod era;
pub mod error;
pub mod frame;
pub mod header_value;
pub mod lines;
pub mod sse;

pub use frame::{Frame, FrameError, FrameKind, Message, RequestId};
