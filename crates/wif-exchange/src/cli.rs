//! `wif token`: print an access token for this pod's workload identity.
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     token: wif_exchange::cli::TokenArgs,
//! }
//!
//! # async fn demo() {
//! let cli = Cli::parse();
//! std::process::exit(wif_exchange::cli::run(cli.token).await);
//! # }
//! ```

use std::{
    io::Write,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{Error, TokenRequestOptions, WorkloadIdentityCredentialBuilder, token::AccessToken};

/// Seconds since the Unix epoch (0 for times before it).
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Arguments of `wif token`. Settings not given here come from the `AZURE_*` variables.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct TokenArgs {
    /// Scope to request, `<resource>/.default`.
    #[arg(
        long,
        value_name = "RESOURCE/.default",
        help = "Scope to request: <resource>/.default, e.g. https://vault.azure.net/.default"
    )]
    pub scope: String,
    /// Tenant to use instead of AZURE_TENANT_ID.
    #[arg(long, value_name = "TENANT")]
    pub tenant_id: Option<String>,
    /// Client id to use instead of AZURE_CLIENT_ID.
    #[arg(long, value_name = "CLIENT_ID", conflicts_with = "identity")]
    pub client_id: Option<String>,
    /// Use the ServiceAccount's identity NAME (annotation azure.workload.identity/client-id.NAME):
    /// its client id from AZURE_CLIENT_ID_<NAME>, its tenant from AZURE_TENANT_ID_<NAME> if set.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Token file to use instead of AZURE_FEDERATED_TOKEN_FILE.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Authority to use instead of AZURE_AUTHORITY_HOST.
    #[arg(long, value_name = "URL")]
    pub authority_host: Option<String>,
    /// Output: the bare token, or one line of JSON with access_token, expires_on, refresh_on
    /// (Unix seconds) and token_type.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl TokenArgs {
    /// Arguments for `scope` with everything else defaulted.
    pub fn new(scope: impl Into<String>) -> Self {
        Self {
            scope: scope.into(),
            tenant_id: None,
            client_id: None,
            identity: None,
            token_file: None,
            authority_host: None,
            output: OutputFormat::Text,
        }
    }

    /// Uses the ServiceAccount's identity named `name` (`AZURE_CLIENT_ID_<NAME>`).
    #[must_use]
    pub fn with_identity(mut self, name: impl Into<String>) -> Self {
        self.identity = Some(name.into());
        self
    }

    /// Sets the output format.
    #[must_use]
    pub fn with_output(mut self, output: OutputFormat) -> Self {
        self.output = output;
        self
    }
}

/// Output format of `wif token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The access token alone.
    Text,
    /// A JSON object.
    Json,
}

/// Runs `wif token` with the environment's configuration: the token (or JSON) on stdout and exit
/// code 0, or one line on stderr and exit code 1.
pub async fn run(args: TokenArgs) -> i32 {
    // Not locked across the exchange: a log subscriber may write to the same streams meanwhile.
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let builder = match &args.identity {
        Some(name) => WorkloadIdentityCredentialBuilder::from_env_named(name),
        None => WorkloadIdentityCredentialBuilder::from_env(),
    };
    run_with(args, builder, &mut out, &mut err).await
}

/// [`run`] with a given builder (the arguments override it) and output streams.
pub async fn run_with(
    args: TokenArgs,
    builder: WorkloadIdentityCredentialBuilder,
    stdout: &mut (dyn Write + Send),
    stderr: &mut (dyn Write + Send),
) -> i32 {
    let output = args.output;
    let result = fetch(args, builder).await;
    let written = match result {
        Ok(token) => match render(&token, output) {
            Ok(text) => writeln!(stdout, "{text}").map(|()| 0),
            Err(e) => writeln!(stderr, "error: {e}").map(|()| 1),
        },
        Err(e) => writeln!(stderr, "{}", error_line(&e)).map(|()| 1),
    };
    written.unwrap_or(1)
}

async fn fetch(
    args: TokenArgs,
    mut builder: WorkloadIdentityCredentialBuilder,
) -> Result<AccessToken, Error> {
    let TokenArgs {
        scope,
        tenant_id,
        client_id,
        identity: _, // chose the builder
        token_file,
        authority_host,
        output: _,
    } = args;
    if let Some(t) = tenant_id {
        builder = builder.tenant_id(t);
    }
    if let Some(c) = client_id {
        builder = builder.client_id(c);
    }
    if let Some(f) = token_file {
        builder = builder.token_file(f);
    }
    if let Some(a) = authority_host {
        builder = builder.authority_host(a);
    }
    builder
        .build()?
        .get_token(&[scope.as_str()], &TokenRequestOptions::default())
        .await
}

fn render(token: &AccessToken, output: OutputFormat) -> Result<String, serde_json::Error> {
    match output {
        OutputFormat::Text => Ok(token.token().expose_secret().to_owned()),
        OutputFormat::Json => serde_json::to_string(&serde_json::json!({
            "access_token": token.token().expose_secret(),
            "expires_on": unix_seconds(token.expires_on()),
            "refresh_on": unix_seconds(token.refresh_on()),
            "token_type": token.token_type(),
        })),
    }
}

/// The one-line message for a failure: the AADSTS code, the first line of Entra's message and
/// our hint, or the error and its hint.
pub fn error_line(err: &Error) -> String {
    let mut line = match err {
        Error::Entra(e) => {
            let mut s = String::from("error: ");
            if let Some(code) = e.aadsts() {
                s.push_str(&format!("AADSTS{code}: "));
            }
            s.push_str(e.message().unwrap_or("(no message)"));
            s.push_str(&format!(" (HTTP {}", e.status));
            if let Some(class) = &e.error {
                s.push_str(&format!(" {class}"));
            }
            s.push(')');
            s
        }
        other => format!("error: {other}"),
    };
    if let Some(hint) = err.hint() {
        line.push_str(&format!(" hint: {hint}"));
    }
    line.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        token: TokenArgs,
    }

    #[test]
    fn args_parse() {
        let cli = Cli::try_parse_from([
            "wif",
            "--scope",
            "https://vault.azure.net/.default",
            "--output",
            "json",
            "--tenant-id",
            "t",
        ])
        .expect("parse");
        assert_eq!(cli.token.scope, "https://vault.azure.net/.default");
        assert_eq!(cli.token.output, OutputFormat::Json);
        assert_eq!(cli.token.tenant_id.as_deref(), Some("t"));
        assert!(Cli::try_parse_from(["wif"]).is_err(), "--scope is required");
        let cli = Cli::try_parse_from(["wif", "--scope", "x", "--identity", "storage"]).expect("parse");
        assert_eq!(cli.token.identity.as_deref(), Some("storage"));
        assert!(
            Cli::try_parse_from(["wif", "--scope", "x", "--identity", "a", "--client-id", "c"]).is_err(),
            "--identity and --client-id exclude each other"
        );
        assert!(Cli::try_parse_from(["wif", "--scope", "x", "--output", "yaml"]).is_err());
    }

    #[test]
    fn json_output_has_the_documented_fields() {
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let t = AccessToken::new("tok", "Bearer", exp, exp - Duration::from_secs(1800));
        let v: serde_json::Value =
            serde_json::from_str(&render(&t, OutputFormat::Json).expect("json")).expect("parse");
        assert_eq!(
            v,
            serde_json::json!({"access_token": "tok", "expires_on": 2_000_000_000u64, "refresh_on": 1_999_998_200u64, "token_type": "Bearer"})
        );
        assert_eq!(render(&t, OutputFormat::Text).expect("text"), "tok");
    }

    #[test]
    fn run_is_send_so_binaries_may_spawn_it() {
        fn assert_send<T: Send>(_: &T) {}
        let fut = run(TokenArgs::new("https://vault.azure.net/.default"));
        assert_send(&fut);
    }

    #[tokio::test]
    async fn configuration_errors_are_one_line_and_exit_1() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(
            TokenArgs::new("https://vault.azure.net/.default"),
            WorkloadIdentityCredentialBuilder::default(),
            &mut out,
            &mut err,
        )
        .await;
        assert_eq!(code, 1);
        assert!(out.is_empty());
        let err = String::from_utf8(err).expect("utf8");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: missing tenant id: set the AZURE_TENANT_ID"),
            "{err}"
        );
        assert!(err.contains("hint: "), "{err}");
    }
}
