//! One module per subcommand.

use std::{future::Future, process::ExitCode};

pub(crate) mod controller;
pub(crate) mod crd;
pub(crate) mod mutate;
pub(crate) mod unmutated;
pub(crate) mod webhook;

/// Runs an async subcommand on a multi-threaded runtime and maps its error to exit code 1.
pub(crate) fn run_async(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a long-running subcommand starts from: the Kubernetes client (kubeconfig or in-cluster)
/// and a token cancelled when SIGTERM or SIGINT arrives.
pub(crate) async fn client_and_stop() -> anyhow::Result<(kube::Client, tokio_util::sync::CancellationToken)> {
    use anyhow::Context as _;
    let client = kube::Client::try_default()
        .await
        .context("failed to create a Kubernetes client")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        signal_stop.cancel();
    });
    Ok((client, stop))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Test support for the subcommands' flag groups.
#[cfg(test)]
pub(crate) mod testing {
    use clap::{Args, Parser};

    #[derive(Parser)]
    struct Cmd<A: Args> {
        #[command(flatten)]
        args: A,
    }

    /// Parses `argv` as subcommand `name`'s flags `A` and converts them into its config `C`;
    /// each of `required` (flag, value) is added unless `argv` names the flag.
    pub(crate) fn config<A: Args, C: TryFrom<A>>(
        name: &str,
        required: &[(&str, &str)],
        argv: &[&str],
    ) -> Result<C, C::Error> {
        let mut full = vec![name];
        for (flag, value) in required {
            if !argv.contains(flag) {
                full.extend([*flag, *value]);
            }
        }
        full.extend(argv);
        let cmd = Cmd::<A>::try_parse_from(full).expect("flags parse");
        C::try_from(cmd.args)
    }
}
