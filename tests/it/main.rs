//! Integration tests: one test binary (faster to link than one per file), a module per area.
mod common;

mod nats_harness;
mod delivery;
mod faults;
mod process;
mod publish;
mod openapi;
