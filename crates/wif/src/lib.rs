//! Command-line wiring of the `wif` binary. Each subcommand parses its flags into the
//! configuration type of the crate that does the work; nothing here holds policy.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod doctor;
mod logging;

/// Entra workload identity for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "wif", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mutating admission webhook (HTTPS).
    Webhook(Box<cmd::webhook::WebhookArgs>),
    /// Show what the webhook would do to a pod, offline.
    Mutate(cmd::mutate::MutateArgs),
    /// Exchange the workload's projected ServiceAccount token for an Entra access token.
    Token(wif_exchange::cli::TokenArgs),
    /// Run a local Entra (token endpoint, discovery, Graph and ARM credential APIs) for demos and tests.
    #[cfg(feature = "emulator")]
    Emulator(Box<wif_emulator::Args>),
    /// Check, one line per step, why a pod or ServiceAccount does (not) get Entra tokens.
    Doctor(Box<doctor::DoctorArgs>),
    /// Run the FederatedIdentityBinding controller (Graph and ARM federated credentials).
    Controller(Box<cmd::controller::ControllerArgs>),
    /// Print the CustomResourceDefinitions (YAML), e.g. `wif crd | kubectl apply -f -`.
    Crd(cmd::crd::CrdArgs),
    /// Print the version.
    Version,
}

/// Parses the command line and runs the subcommand; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One process-wide choice, made before any TLS is set up: ring, which every crate here uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Version => {
            println!("wif {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Mutate(args) => cmd::mutate::run(args),
        Command::Controller(args) => cmd::run_async(cmd::controller::run(*args)),
        Command::Crd(args) => cmd::crd::run(args),
        Command::Doctor(args) => doctor::run(*args),
        Command::Webhook(args) => cmd::run_async(cmd::webhook::run(*args)),
        Command::Token(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => {
                    eprintln!("error: failed to start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            ExitCode::from(u8::try_from(runtime.block_on(wif_exchange::cli::run(args))).unwrap_or(1))
        }
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => cmd::run_async(async move {
            logging::init("info", logging::LogFormat::Text);
            wif_emulator::run(*args, cmd::shutdown_signal()).await?;
            Ok(())
        }),
    }
}
