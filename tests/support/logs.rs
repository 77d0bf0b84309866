//! Reading pgmoat's log as text: tracing colours its output even into a file, so matching a
//! `key=value` pair needs the ANSI escapes taken out first.

use std::time::{Duration, Instant};

use super::Pgmoat;

/// `text` without ANSI escape sequences (ESC '[' ... final byte).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

impl Pgmoat {
    /// The log so far, without colour codes.
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log())
    }

    /// Waits until one log line after `mark` contains every one of `needles`, matching the
    /// log without colour codes (so `tls="TLSv1.2"` can be searched for as written).
    pub fn wait_for_log_line_since(&self, mark: usize, needles: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            let found = log.get(mark..).is_some_and(|new| {
                strip_ansi(new)
                    .lines()
                    .any(|line| needles.iter().all(|n| line.contains(n)))
            });
            if found {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgmoat logged no line with all of {needles:?} within {timeout:?}\n\
                     --- log ---\n{}",
                    strip_ansi(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
