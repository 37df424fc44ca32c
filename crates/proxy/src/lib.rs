//! The Shadowcat relay engine: fronts → sessions → pipeline → upstreams.
//!
//! * [`front`]: client side (stdio, Streamable HTTP).
//! * [`session`]: one client's conversation with its own upstream.
//! * [`pipeline`]: hooks run on every frame in both directions.
//! * [`upstream`]: server side (stdio child process, Streamable HTTP client).
//! * [`forward`]: the `forward stdio` and `forward http` modes, compositions of the parts above.
//! * [`runtime`]: process-level shutdown signals.

pub mod error;
pub mod forward;
pub mod front;
pub mod pipeline;
pub mod runtime;
pub mod session;
pub mod upstream;

pub use error::{ProxyError, Side};
