//! Any request a client can send to the emulator: token forms, Graph and ARM JSON bodies,
//! paths and methods, through the real router in process. Nothing panics and every answer is a
//! status code (5xx only for injected faults, which are off here).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wif_emulator::fuzzing::{Service, Target};

static TARGET: OnceLock<Target> = OnceLock::new();

const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "PUT", "DELETE"];

fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| Target::new().expect("the fuzzing emulator starts"));
    // Byte 0: service; byte 1: method; then the path up to the first newline; the rest is the body.
    let [service, method, rest @ ..] = data else { return };
    let service = match service % 3 {
        0 => Service::Token,
        1 => Service::Graph,
        _ => Service::Arm,
    };
    let method = METHODS[usize::from(*method) % METHODS.len()];
    let (path, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else { return };
    if let Some(status) = target.request(service, method, path, body) {
        assert!(status < 500, "{method} {path}: {status}");
    }
});
