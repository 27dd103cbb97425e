//! Plugin logging: `tracing` events go to the file named by the `logFile`
//! configuration key, at `logLevel` (error, warn, info, debug, trace;
//! default info). Never to stdout, which carries the protocol. Without
//! `logFile` nothing is installed and logging costs nothing.

use std::fs::OpenOptions;
use std::sync::Mutex;

use serde_json::Value;
use tracing_subscriber::filter::LevelFilter;

use crate::config::NetConf;

fn level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        "off" | "none" => Some(LevelFilter::OFF),
        _ => None,
    }
}

/// Installs the file logger if the configuration asks for one. Problems
/// (an unwritable file, an unknown level) are reported on stderr and never
/// fail the command: logging must not break pod networking.
pub fn init_from_config(conf: &NetConf) {
    let Some(path) = conf
        .raw
        .get("logFile")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    let lvl = match conf.raw.get("logLevel").and_then(Value::as_str) {
        None => LevelFilter::INFO,
        Some(s) => level(s).unwrap_or_else(|| {
            eprintln!("logLevel {s:?} is not error, warn, info, debug or trace; using info");
            LevelFilter::INFO
        }),
    };
    let file = match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("logFile {path}: {e}; not logging to a file");
            return;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_max_level(lvl)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(level("DEBUG"), Some(LevelFilter::DEBUG));
        assert_eq!(level("warning"), Some(LevelFilter::WARN));
        assert_eq!(level("loud"), None);
    }
}
