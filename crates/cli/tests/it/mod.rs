pub mod harness;

mod eras;
mod http_front;
mod lifecycle;
mod python;
mod replicas;
mod resumption;
mod rmcp_clients;
mod sessions;
mod store;
mod upstream_resume;
