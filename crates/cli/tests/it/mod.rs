pub mod harness;

mod eras;
mod gateway;
mod gateway_auth;
mod gateway_support;
mod http_front;
mod intercept;
mod legacy_sse;
mod lifecycle;
mod python;
mod replicas;
mod resumption;
mod rmcp_clients;
mod sessions;
mod shadow;
mod store;
mod tapes;
mod upstream_resume;
