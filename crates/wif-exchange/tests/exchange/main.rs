//! The exchange against an in-process HTTPS token endpoint: request shape, error mapping,
//! retries, timeouts, caching, refresh, token-file rotation, and redaction.
#![allow(clippy::unwrap_used)]

mod cache;
mod errors;
mod redaction;
mod request;
mod retries;
mod token_file;
mod transport;

#[path = "../common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::*;
use wif_exchange::{Error, TokenRequestOptions, TransportErrorKind};

fn opts() -> TokenRequestOptions {
    TokenRequestOptions::default()
}

fn near(t: SystemTime, expected: SystemTime) -> bool {
    let d = t.duration_since(expected).unwrap_or_else(|e| e.duration());
    d < Duration::from_secs(5)
}
