//! End-to-end tests through a real kube-apiserver. One test binary, so one control plane serves
//! every test; each test has its own namespace, webhook process and webhook configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adder;
mod controller;
mod doctor;
mod exchange;
mod harness;
mod helm;
mod http2;
mod identities;
mod node;
mod pool;
mod token;
mod unmutated;
mod webhook;
