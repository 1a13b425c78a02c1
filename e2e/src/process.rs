//! Child processes that die with their guard.

use std::{net::SocketAddr, path::Path, process::Child, time::Duration};

/// Kills (SIGKILL) and reaps the child when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    /// The process.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
}

impl ChildGuard {
    /// Sends SIGTERM and waits up to `timeout` for the process to exit; true when it did.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Where the process listens: the socket addresses in `fields` of the line `message` it logs
    /// to `log` once its listeners are bound (JSON or text format). Servers bind port 0 and say
    /// where they are; a test never picks a free port and hands it on, because under load another
    /// process takes it first.
    pub fn wait_listening(&mut self, log: &Path, message: &str, fields: &[&str]) -> Vec<SocketAddr> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addrs) = text
                .lines()
                .find_map(|line| listening_fields(line, message, fields))
            {
                return addrs;
            }
            let exited = self.exited();
            if exited || std::time::Instant::now() > deadline {
                let why = if exited {
                    "exited"
                } else {
                    "logged nothing after 30 s"
                };
                panic!(
                    "{} {why} before `{message}`:\n{}",
                    self.name,
                    crate::tail(log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The addresses of `fields` on `line` when it is the log line `message`, as the `wif` binary
/// writes it in JSON (`{"message":…,"listen":"127.0.0.1:1234"}`) or text (`… listen=127.0.0.1:1234`).
fn listening_fields(line: &str, message: &str, fields: &[&str]) -> Option<Vec<SocketAddr>> {
    if !line.contains(message) {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return fields
            .iter()
            .map(|f| json.get(*f)?.as_str()?.parse().ok())
            .collect();
    }
    fields
        .iter()
        .map(|f| {
            line.split_whitespace()
                .find_map(|token| token.strip_prefix(f)?.strip_prefix('='))?
                .parse()
                .ok()
        })
        .collect()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_from_json_and_text_lines() {
        let json = r#"{"timestamp":"t","level":"INFO","message":"webhook listening","listen":"127.0.0.1:41","admin":"127.0.0.1:42"}"#;
        let text = "2026-01-01T00:00:00Z  INFO wif_webhook::run: webhook listening listen=127.0.0.1:41 admin=127.0.0.1:42";
        let want: Vec<SocketAddr> = vec!["127.0.0.1:41".parse().unwrap(), "127.0.0.1:42".parse().unwrap()];
        for line in [json, text] {
            assert_eq!(
                listening_fields(line, "webhook listening", &["listen", "admin"]),
                Some(want.clone()),
                "{line}"
            );
        }
        assert_eq!(listening_fields(json, "admin server listening", &["admin"]), None);
        assert_eq!(
            listening_fields("webhook listening listen=nope", "webhook listening", &["listen"]),
            None
        );
    }
}
