//! Any client assertion a workload can send to the token endpoint: the emulator's JWT parsing
//! and claim checks (algorithm, issuer, subject, audiences, lifetime, time range) never panic,
//! and the checks do not depend on anything but the token and the clock.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wif_emulator::fuzzing::assertion;

fuzz_target!(|data: &[u8]| {
    // The clock is fuzzed too: the first 8 bytes, when present.
    let (now, token) = match data.split_first_chunk::<8>() {
        Some((now, rest)) => (i64::from_le_bytes(*now), rest),
        None => (1_700_000_000, data),
    };
    let Ok(token) = std::str::from_utf8(token) else { return };
    let first = assertion(token, now);
    assert_eq!(first, assertion(token, now), "the checks are deterministic");
});
