//! Integration tests: one test binary (faster to link than one per file), a module per area.
mod common;

mod nats_harness;
mod cluster;
mod delivery;
mod faults;
mod inbound;
mod inbound_hostile;
mod kv;
mod process;
mod publish;
mod pull;
mod request;
mod story;
mod tracking;
mod openapi;
mod helm;
mod connections;
mod edge_hostile;
mod hostile;
