//! falcon-sentinel-bridge: the service that moves CrowdStrike Falcon events into Microsoft
//! Sentinel and never loses one.
//!
//! This crate owns the wiring: the YAML config, the pipeline (source → buffer → writer),
//! backpressure between the stages, the admin endpoints and metrics, health records, the
//! dead-letter destination and the CLI (`run`, `validate`, `demo`, `dead-letter`). The three
//! libraries (`falcon-stream`, `bridge-buffer`, `sentinel-ingest`) know nothing of each
//! other; only this crate converts between their types.
//!
//! What it must never do: acknowledge a buffer position before Azure accepted the record or
//! it was dead-lettered durably; read a secret anywhere but at start-up, or print one; block
//! the async runtime with disk or CPU work; exit in a loop on bad input.
//!
//! Layout:
//! - [`cli`]: the command line and exit codes; [`runtime`]: the tokio runtime and signals.
//! - [`config`]: the YAML schema, interpolation, validation with locations, secrets.
//! - [`pipeline`]: the running service; [`pipeline::sink`] (Falcon → buffer),
//!   [`pipeline::writer`] (buffer → Sentinel), [`pipeline::router`] (eventType → stream).
//! - [`wiring`]: validated config → each library's configuration; [`kafka_oauth`]: Entra
//!   tokens for the Kafka buffer's OAUTHBEARER.
//! - [`admin`], [`metrics`], [`health`], [`telemetry`]: operations.
//! - [`dead_letter`], [`redrive`]: the dead-letter directory and `dead-letter redrive`.
//! - [`demo`]: the whole pipeline against the in-process testbench.

pub mod admin;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod demo;
pub mod health;
pub mod kafka_oauth;
pub mod metrics;
mod output;
pub mod pipeline;
pub mod redrive;
pub mod runtime;
pub mod telemetry;
pub mod wiring;
