//! `falcon-sentinel-bridge`: parse the command line and hand over to the library.
//! Everything that can be tested lives in the library; this file stays thin.

use std::process::ExitCode;

use clap::Parser as _;
use falcon_sentinel_bridge::cli::{Cli, run_cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_cli(cli)
}
