//! coffer's domain: names, values, validation, the dotenv parser, token scopes and the
//! wire types shared by the API, the client and the CLI.
//!
//! Invariant: this crate does no I/O and knows nothing of tokio, sqlx, HTTP or crypto
//! primitives. Everything here is a pure function of its inputs, which is what makes it
//! property-testable and fuzzable.

pub mod change;
pub mod dotenv;
pub mod duration;
pub mod names;
pub mod scope;
pub mod secret;
pub mod wire;

pub use change::{ChangeSet, ValidationError};
pub use names::{AppName, NameError, SecretName};
pub use scope::{Action, Scope};
pub use secret::{SecretBytes, SecretValue};

/// Largest value of one secret, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest sum of all values of one app, in bytes: keeps a workload's environment well inside
/// the kernel's `ARG_MAX`-derived limits.
pub const MAX_APP_BYTES: usize = 512 * 1024;
/// Prefix reserved for variables the platform injects (`COFFER_APP_NAME`, …).
pub const RESERVED_PREFIX: &str = "COFFER_";
