//! An entry's hash as Redis returns it, and the entry it holds.
//!
//! A lookup asks for the entry's fields by name (`HMGET`) and reads their values where
//! the reply holds them. It used to ask for the whole hash (`HGETALL`) and convert the
//! reply into a `HashMap<String, String>`: fred builds a map of the reply, then the
//! conversion a second one with two strings per field, on every hit.

use std::borrow::Cow;
use std::collections::HashMap;

use fred::prelude::Value;
use fred::types::Key;

use crate::clock::from_unix_secs;
use crate::{CacheEntry, CacheError, Result};

/// Fields of an entry's hash, by name.
pub(super) trait EntryFields {
    /// The value of the field `name`, if the hash has it.
    fn field(&self, name: &str) -> Option<Cow<'_, str>>;

    /// Whether the hash holds an entry at all: absent keys read as an empty hash, and
    /// older versions could leave a stub without a URL.
    fn has_url(&self) -> bool {
        self.field("url").is_some()
    }
}

impl EntryFields for HashMap<String, String> {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|value| Cow::Borrowed(value.as_str()))
    }
}

/// The fields a lookup reads (`HMGET`), in the order of its reply.
pub(super) const FIELDS: [&str; 7] = [
    "url",
    "expires_at",
    "access_count",
    "created_at",
    "last_accessed",
    "image_key",
    "mime_type",
];

/// [`FIELDS`] as fred's keys, without copying.
pub(super) fn field_keys() -> Vec<Key> {
    FIELDS
        .iter()
        .map(|name| Key::from_static_str(name))
        .collect()
}

/// An `HMGET` reply of [`FIELDS`]: each field's value where the reply holds it (nil where
/// the hash has no such field, or there is no hash).
pub(super) struct Fields(Vec<Value>);

impl Fields {
    /// The values of `reply`; an error says why it is not an `HMGET` of [`FIELDS`].
    pub fn from_reply(reply: Value) -> Result<Self, &'static str> {
        match reply {
            Value::Array(values) if values.len() == FIELDS.len() => Ok(Fields(values)),
            Value::Array(_) => Err("an HMGET reply with the wrong number of values"),
            _ => Err("not an HMGET reply"),
        }
    }
}

impl EntryFields for Fields {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        let at = FIELDS.iter().position(|field| *field == name)?;
        self.0[at].as_str()
    }
}

/// The entry in `fields`, the hash under `key`; corrupt if a field it needs is missing or
/// malformed.
pub(super) fn parse_entry(key: &str, fields: &impl EntryFields) -> Result<CacheEntry> {
    let corrupt = |field: &str| CacheError::Corrupt {
        key: key.to_owned(),
        reason: format!("field {field} is missing or malformed"),
    };
    let number = |field: &str| -> Result<f64> {
        fields
            .field(field)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| corrupt(field))
    };
    Ok(CacheEntry {
        url: fields
            .field("url")
            .map(|url| (*url).into())
            .ok_or_else(|| corrupt("url"))?,
        expires_at: from_unix_secs(number("expires_at")?),
        access_count: fields
            .field("access_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        created_at: from_unix_secs(number("created_at")?),
        last_accessed: from_unix_secs(number("last_accessed").unwrap_or(0.0)),
        image_key: fields
            .field("image_key")
            .map_or_else(|| key.into(), |image_key| (*image_key).into()),
        mime_type: fields.field("mime_type").map(|mime| (*mime).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn reads_values_by_position_and_refuses_what_is_not_an_hmget_reply() {
        let reply = Value::Array(vec![
            text("https://b.example/a.jpg"),
            text("200.5"),
            Value::Null,
            Value::Bytes("100".into()),
            Value::Null,
            Value::Null,
            text("image/png"),
        ]);
        let fields = Fields::from_reply(reply).unwrap();
        assert!(fields.has_url());
        let entry = parse_entry("a.jpg", &fields).unwrap();
        assert_eq!(&*entry.url, "https://b.example/a.jpg");
        assert_eq!(entry.expires_at_unix(), 200.5);
        assert_eq!(entry.created_at_unix(), 100.0);
        assert_eq!(entry.access_count, 0);
        assert_eq!(&*entry.image_key, "a.jpg");
        assert_eq!(entry.mime_type.as_deref(), Some("image/png"));

        // No hash (or a stub without a URL): every value nil.
        let none = Fields::from_reply(Value::Array(vec![Value::Null; 7])).unwrap();
        assert!(!none.has_url());
        assert!(parse_entry("a.jpg", &none).is_err());
        assert!(Fields::from_reply(Value::Array(vec![text("x")])).is_err());
        assert!(Fields::from_reply(text("a JSON string")).is_err());
    }
}
