//! Bodies of the vault's HTTP interface (the types live in `coffer_core::wire::vault` so the
//! API's client and the vault's server share them).

pub use coffer_core::wire::vault::SealingKeysBody;
