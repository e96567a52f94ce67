//! The command line: `run`, `validate`, `demo` and `dead-letter`.
//!
//! Exit codes follow `sysexits.h` where one fits: 78 (`EX_CONFIG`) for a configuration the
//! bridge refuses, 1 for a runtime failure, 2 for a usage error (clap's own).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ProcessEnv};

/// Exit code for an invalid configuration (`EX_CONFIG` in sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// Moves CrowdStrike Falcon Event Streams events into Microsoft Sentinel, losing none.
#[derive(Debug, Parser)]
#[command(name = "falcon-sentinel-bridge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Check a configuration without touching the network; print it with secrets redacted.
    Validate(ValidateArgs),
    /// Run the whole pipeline against the in-process testbench and count every event.
    Demo(DemoArgs),
    /// Inspect or resend dead-lettered records.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(DeadLetterCommand),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Path of the YAML configuration file.
    #[arg(long, short, env = "FSB_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also check that every file the config names (secrets, CA files, token file) exists
    /// and reads, as `run` does at start-up; use it where those files are mounted.
    #[arg(long)]
    check_files: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many events the emulated Falcon tenant produces.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Where the disk buffer and dead letters go (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Falcon partitions of the emulated tenant.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Hide the progress bar (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// List dead-lettered records: file, stage, reason and count.
    List(ConfigArg),
    /// Resend records Azure refused (after the DCR or table was fixed); delivered files move to `redriven/`.
    Redrive(ConfigArg),
}

/// Runs the parsed command line and turns the outcome into an exit code.
pub fn run_cli(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(arg) => validate(&arg),
        Command::Run(arg) => with_config(&arg, crate::runtime::block_on_service),
        Command::Demo(args) => crate::demo::run(&args),
        Command::DeadLetter(DeadLetterCommand::List(arg)) => with_config(&arg, |cfg| {
            crate::dead_letter::list_command(&cfg, &ProcessEnv)
        }),
        Command::DeadLetter(DeadLetterCommand::Redrive(arg)) => {
            with_config(&arg, crate::runtime::block_on_redrive)
        }
    }
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let loaded = if args.check_files {
        load(&args.config)
    } else {
        config::load(&args.config.config, &ProcessEnv)
            .map_err(|errors| report(&args.config, &errors))
    };
    match loaded {
        Ok(cfg) => {
            crate::output::stdout(&cfg.redacted_yaml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn with_config(arg: &ConfigArg, f: impl FnOnce(config::Config) -> anyhow::Result<()>) -> ExitCode {
    let cfg = match load(arg) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    match f(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            crate::output::stderr(&format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

fn load(arg: &ConfigArg) -> Result<config::Config, ExitCode> {
    let loaded =
        config::load(&arg.config, &ProcessEnv).and_then(|cfg| cfg.check_files().map(|()| cfg));
    loaded.map_err(|errors| report(arg, &errors))
}

fn report(arg: &ConfigArg, errors: &config::ConfigErrors) -> ExitCode {
    crate::output::stderr(&format!(
        "{}: invalid configuration\n{errors}",
        arg.config.display()
    ));
    ExitCode::from(EXIT_CONFIG)
}
