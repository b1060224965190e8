//! Logging: human-readable lines on stderr, and for `dev` a copy in the data dir. Logs carry
//! names, versions and ids — never a value or a token (see the sentinel-scan tests).

use std::path::Path;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

pub fn init(filter: Option<&str>, file: Option<&Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter.unwrap_or("info"))?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let file_layer = match file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file_layer)
        .try_init()?;
    Ok(())
}
