//! Integration tests: one test binary (faster to link than one per file), a module per area.
mod common;

mod alerts;
mod cli;
mod cluster;
mod connections;
mod delivery;
mod edge_hostile;
mod faults;
mod helm;
mod hostile;
mod inbound;
mod inbound_hostile;
mod kv;
mod legacy;
mod logs;
mod metrics;
mod nats_harness;
mod openapi;
mod process;
mod publish;
mod pull;
mod request;
mod router;
mod story;
mod traces;
mod tracking;
