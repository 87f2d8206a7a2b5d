//! Reading Envoy's log after it failed: which lines explain the failure.
//!
//! Envoy's default format is `[date time][thread][level][logger] [file:line] message`,
//! and a message may continue on the following lines (its "initializing config"
//! error quotes the bootstrap path on a second line). An [`Entry`] is one
//! message with its continuation lines joined.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// What the filter logs (at critical level) when `on_configure` rejects its configuration.
pub const FILTER_CONFIG_ERROR: &str = "invalid filter configuration";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `critical`, `error`, `warning`, …; empty for lines not in Envoy's format
    /// (what Envoy prints on stderr before its logger is set up).
    pub level: String,
    /// `[logger] message`, without the timestamp, thread and source location.
    pub text: String,
}

impl Entry {
    pub fn is_error(&self) -> bool {
        matches!(self.level.as_str(), "critical" | "error" | "")
    }
}

/// The entries of a log, continuation lines folded into their entry.
pub fn entries(log: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in log.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Some(entry) => entries.push(entry),
            None => match entries.last_mut() {
                Some(last) if !last.level.is_empty() => {
                    last.text.push(' ');
                    last.text.push_str(line.trim());
                }
                _ => entries.push(Entry {
                    level: String::new(),
                    text: line.trim().to_owned(),
                }),
            },
        }
    }
    entries
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut rest = line;
    let mut groups = Vec::with_capacity(4);
    for _ in 0..4 {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        groups.push(&inner[..end]);
        rest = &inner[end + 1..];
    }
    let (level, logger) = (groups[2], groups[3]);
    // ` [source/…/file.cc:123] ` is noise for a user.
    let message = rest
        .strip_prefix(" [")
        .and_then(|after| after.split_once("] "))
        .map_or(rest.trim_start(), |(_, message)| message);
    Some(Entry {
        level: level.to_owned(),
        text: format!("[{logger}] {}", message.trim_end()),
    })
}

/// The error entries, when one of them is the filter refusing its configuration.
pub fn filter_config_errors(entries: &[Entry]) -> Option<Vec<&Entry>> {
    entries
        .iter()
        .any(|entry| entry.text.contains(FILTER_CONFIG_ERROR))
        .then(|| entries.iter().filter(|entry| entry.is_error()).collect())
}

/// The address in Envoy's `cannot bind '127.0.0.1:8080': Address already in use`.
pub fn busy_address(entries: &[Entry]) -> Option<SocketAddr> {
    entries.iter().find_map(|entry| {
        if !entry.text.contains("Address already in use") {
            return None;
        }
        let (_, after) = entry.text.split_once("cannot bind '")?;
        let (address, _) = after.split_once('\'')?;
        address.parse().ok()
    })
}

/// The entries indented for a terminal, one per line.
pub fn indented(entries: &[&Entry]) -> String {
    let mut text = String::new();
    for entry in entries {
        let level = if entry.level.is_empty() {
            "stderr"
        } else {
            &entry.level
        };
        let _ = writeln!(text, "  {level}: {}", entry.text);
    }
    text
}

/// The last `lines` lines of each non-empty file, headed by its path.
pub fn tail(files: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let all: Vec<&str> = text.lines().filter(|line| !line.is_empty()).collect();
        if all.is_empty() {
            continue;
        }
        let _ = writeln!(out, "--- {} (last {lines} lines)", file.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "{line}");
        }
    }
    if out.is_empty() {
        out.push_str("(Envoy wrote no log)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy 1.40 writes when the filter rejects `5/fortnight`.
    const REJECTED: &str = "\
[2026-11-23 11:56:27.840][10169][critical][wasm] [source/extensions/common/wasm/context.cc:1160] wasm log maas-gateway maas-gateway: maas-gateway: invalid filter configuration: subscriptions.free.limits.tokens[1]: unknown window unit `fortnight`
[2026-11-23 11:56:27.840][10169][error][wasm] [source/extensions/common/wasm/wasm.cc:104] Wasm VM failed Failed to configure base Wasm plugin
[2026-11-23 11:56:27.842][10169][warning][main] [source/server/server.cc:1] unrelated
[2026-11-23 11:56:27.842][10169][critical][main] [source/server/server.cc:449] error `Unable to create Wasm plugin maas-gateway` initializing config 'goo.gle/debugonly   
  /tmp/run/envoy.yaml'
";

    #[test]
    fn entries_drop_the_prefix_and_fold_continuations() {
        let entries = entries(REJECTED);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1].level, "error");
        assert_eq!(
            entries[1].text,
            "[wasm] Wasm VM failed Failed to configure base Wasm plugin"
        );
        assert!(entries[3]
            .text
            .ends_with("initializing config 'goo.gle/debugonly /tmp/run/envoy.yaml'"));
        let plain = super::entries("Unable to create Wasm plugin maas-gateway\n");
        assert_eq!(plain[0].level, "");
        assert!(plain[0].is_error());
    }

    #[test]
    fn a_rejected_filter_config_keeps_the_error_lines() {
        let entries = entries(REJECTED);
        let errors = filter_config_errors(&entries).expect("recognised");
        assert_eq!(errors.len(), 3, "{errors:?}");
        let shown = indented(&errors);
        assert!(shown.starts_with(
            "  critical: [wasm] wasm log maas-gateway maas-gateway: maas-gateway: invalid filter configuration: subscriptions.free.limits.tokens[1]"
        ), "{shown}");
        assert!(!shown.contains("unrelated"));
        assert_eq!(filter_config_errors(&entries[1..]), None);
    }

    #[test]
    fn finds_the_busy_address() {
        let log = "[2026-11-23 11:56:23.534][9918][critical][main] [source/server/server.cc:449] error `cannot bind '127.0.0.1:19901': Address already in use` initializing config 'x'\n";
        assert_eq!(
            busy_address(&entries(log)),
            Some("127.0.0.1:19901".parse().expect("addr"))
        );
        assert_eq!(
            busy_address(&entries(
                "cannot bind '127.0.0.1:1': Address already in use\n"
            )),
            Some("127.0.0.1:1".parse().expect("addr"))
        );
        assert_eq!(busy_address(&entries(REJECTED)), None);
    }
}
