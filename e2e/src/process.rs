//! Child processes that die with their guard.

use std::process::Child;

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
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
