pub mod harness;

mod admin;
mod admin_page;
mod cdp;
mod era_matrix;
mod eras;
mod gateway;
mod gateway_auth;
mod gateway_resilience;
mod gateway_support;
mod http_front;
mod intercept;
mod legacy_sse;
mod lifecycle;
#[cfg(feature = "otel")]
mod otel;
mod peers;
mod python;
mod replicas;
mod resumption;
mod rmcp_clients;
mod sessions;
mod shadow;
mod shared_limits;
mod store;
mod tapes;
mod upstream_credentials;
mod upstream_resume;
