//! falcon-sentinel-bridge: the service that wires the Falcon source, the durable buffer and
//! the Sentinel writer together.

pub mod config;
