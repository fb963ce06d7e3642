//! Shared helpers for the integration tests: real processes and fixtures, no mocks.
pub mod gateway;
pub mod nats;
