//! Store times (µs since the epoch) as RFC 3339 strings on the wire.

use coffer_store::Micros;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn rfc3339(micros: Micros) -> String {
    let secs = micros.div_euclid(1_000_000);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_seconds() {
        assert_eq!(
            super::rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20Z"
        );
    }
}
