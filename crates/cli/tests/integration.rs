//! End-to-end tests of the `shadowcat` binary: real processes, real sockets on 127.0.0.1,
//! real MCP clients (rmcp, python `mcp`).

mod it;
