//! End-to-end tests of the `shadowcat` binary: real processes, real sockets on 127.0.0.1,
//! real MCP clients (rmcp, python `mcp`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod it;
