pub mod harness;

mod http_front;
mod lifecycle;
mod python;
mod rmcp_clients;
mod sessions;
