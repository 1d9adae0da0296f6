//! Times in the public API are `SystemTime`; in the JSON the original system's clients
//! read, they are Unix seconds as floats. These serde adapters keep that JSON.

use std::time::{Duration, SystemTime};

use url_cache::unix_secs;

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
