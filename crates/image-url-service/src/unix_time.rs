//! Times in the public API are `SystemTime`; internally, and in the JSON the original
//! system's clients read, they are Unix seconds as floats. These are the conversions and
//! the serde adapters that keep that JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `secs` Unix seconds as a `SystemTime` (negative or non-finite: the epoch).
pub(crate) fn from_unix_secs(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::try_from_secs_f64(secs).unwrap_or_default()
}

/// `time` as float Unix seconds (before the epoch: 0).
pub(crate) fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn serialize_time<S: serde::Serializer>(
    time: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_secs(*time))
}

pub(crate) fn serialize_opt_time<S: serde::Serializer>(
    time: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => s.serialize_some(&unix_secs(*time)),
        None => s.serialize_none(),
    }
}

pub(crate) fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn serialize_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_clamps() {
        assert_eq!(
            unix_secs(from_unix_secs(1_700_000_000.25)),
            1_700_000_000.25
        );
        assert_eq!(from_unix_secs(-5.0), UNIX_EPOCH);
        assert_eq!(from_unix_secs(f64::NAN), UNIX_EPOCH);
    }
}
