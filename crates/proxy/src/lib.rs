//! The Shadowcat relay engine: fronts → sessions → pipeline → upstreams.
//!
//! * [`front`]: client side (stdio, Streamable HTTP, legacy HTTP+SSE).
//! * [`session`]: one client's conversation with its own upstream.
//! * [`pipeline`]: hooks run on every frame in both directions.
//! * [`upstream`]: server side (stdio child process, Streamable HTTP and HTTP+SSE clients,
//!   transport detection).
//! * [`forward`]: the `forward stdio` and `forward http` modes, compositions of the parts above.
//! * [`runtime`]: process-level shutdown signals.
//! * [`gateway`]: the gateway (reverse proxy) mode: routes with upstream sets, balancing,
//!   authentication, rate limits and metrics on the HTTP front.
//! * [`intercept`]: interceptor rules (`--rules`) and paused messages; [`admin`]: the admin
//!   listener (paused messages, live traffic, the gateway's sessions and upstreams, web page).
//! * [`record`]: the recorder hook (`--record`), writing tapes in the background.
//! * [`translate`]: era translation (2026-07-28 clients ↔ session-based servers and back).
//! * [`shadow`]: shadow traffic (`--shadow`): requests mirrored to a second upstream, replies compared.

pub mod admin;
pub mod error;
pub mod forward;
pub mod front;
pub mod gateway;
pub mod guard;
pub mod intercept;
pub mod pipeline;
pub mod record;
pub mod runtime;
pub mod session;
pub mod shadow;
pub mod sync;
pub mod translate;
pub mod upstream;

pub use error::{ProxyError, Side};
