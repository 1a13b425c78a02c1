//! Logging set-up shared by the long-running subcommands.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// Logging flags of the long-running subcommands.
#[derive(Debug, clap::Args)]
pub(crate) struct LogArgs {
    /// Log filter (e.g. info, debug, wif_webhook=debug, wif_controller=debug).
    #[arg(long, env = "WIF_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "WIF_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber these flags describe.
    pub(crate) fn init(&self) {
        init(&self.log_level, self.log_format);
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `level` when set.
pub(crate) fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        // No colour codes when the log goes to a file or a collector rather than a terminal.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("warning: logging already initialised: {error}");
    }
}
