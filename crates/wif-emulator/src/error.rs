//! The emulator's library error type.

use std::{net::SocketAddr, path::PathBuf};

/// Everything that can stop the emulator from starting or an admin helper call from completing.
///
/// Request-level failures are never errors of this type: they are answered on the wire with the
/// error shape of the API that was called (Entra, Graph or ARM).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file (config, CA, state) could not be read.
    #[error("failed to read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file in the state directory could not be written.
    #[error("failed to write {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML/JSON of the expected shape.
    #[error("failed to parse config file {path}: {message}")]
    ParseConfig {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The config (file or seed) is well-formed but breaks a rule (duplicate ids, invalid credential, …).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The persisted state file could not be parsed.
    #[error("failed to parse state file {path}")]
    ParseState {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Generating or loading the CA or serving certificate failed.
    #[error("failed to create a certificate")]
    Certificate(#[source] rcgen::Error),
    /// Generating, loading or using the token signing key failed.
    #[error("failed to prepare the signing key: {0}")]
    SigningKey(String),
    /// A `--trust-ca` file holds no usable certificate.
    #[error("failed to load trusted CA certificates from {path}: {message}")]
    TrustCa {
        /// The CA file.
        path: PathBuf,
        /// Why it was refused.
        message: String,
    },
    /// The TLS configuration could not be built.
    #[error("failed to configure TLS")]
    Tls(#[source] rustls::Error),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `--issuer-url` is not an absolute `https` URL without query or fragment.
    #[error("invalid issuer url {url:?}: {message}")]
    IssuerUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        message: String,
    },
    /// The outbound HTTP client could not be built.
    #[error("failed to build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// An admin helper request could not be sent or its answer not read.
    #[error("failed to call the emulator admin API")]
    AdminRequest(#[source] reqwest::Error),
    /// An admin helper request was answered with an error status.
    #[error("admin API answered {status}: {body}")]
    AdminStatus {
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
}

/// The emulator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
