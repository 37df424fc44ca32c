//! Fronts: the client side. A front accepts clients and turns their traffic into frames bound to
//! sessions.

pub mod conn;
pub mod http;
pub mod sse;
pub mod stdio;

#[cfg(test)]
mod conn_tests;
