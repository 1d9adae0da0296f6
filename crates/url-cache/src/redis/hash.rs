//! An entry's hash as Redis returns it (`HGETALL`), and the entry it holds.
//!
//! A lookup reads the reply's field/value pairs where they are, in the reply: converting
//! it into a `HashMap<String, String>` first (fred's conversion) allocated a map and two
//! strings per field, on every hit.

use std::borrow::Cow;
use std::collections::HashMap;

use fred::prelude::Value;

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

/// An `HGETALL` reply: the pairs as they came (a flat array in RESP2, a map in RESP3).
pub(super) struct Fields(Vec<(Value, Value)>);

impl Fields {
    /// The pairs of `reply`; an error says why it is not a hash's.
    pub fn from_reply(reply: Value) -> Result<Self, &'static str> {
        match reply {
            Value::Null => Ok(Fields(Vec::new())),
            Value::Array(items) => {
                if items.len() % 2 != 0 {
                    return Err("a hash reply with an odd number of items");
                }
                let mut items = items.into_iter();
                let mut pairs = Vec::with_capacity(items.len() / 2);
                while let (Some(name), Some(value)) = (items.next(), items.next()) {
                    pairs.push((name, value));
                }
                Ok(Fields(pairs))
            }
            Value::Map(map) => Ok(Fields(
                map.inner()
                    .into_iter()
                    .map(|(name, value)| (Value::Bytes(name.inner().clone()), value))
                    .collect(),
            )),
            _ => Err("not a hash reply"),
        }
    }
}

impl EntryFields for Fields {
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(field, _)| field.as_str().as_deref() == Some(name))
            .and_then(|(_, value)| value.as_str())
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
    fn reads_pairs_from_either_protocol_and_refuses_what_is_not_a_hash() {
        let flat = Value::Array(vec![
            text("url"),
            text("https://b.example/a.jpg"),
            Value::Bytes("expires_at".into()),
            text("200.5"),
            text("created_at"),
            text("100"),
        ]);
        let fields = Fields::from_reply(flat).unwrap();
        assert!(fields.has_url());
        let entry = parse_entry("a.jpg", &fields).unwrap();
        assert_eq!(&*entry.url, "https://b.example/a.jpg");
        assert_eq!(entry.expires_at_unix(), 200.5);
        assert_eq!(&*entry.image_key, "a.jpg");
        assert_eq!(entry.mime_type, None);

        let mut map = HashMap::new();
        map.insert(
            fred::types::Key::from("url"),
            text("https://b.example/m.jpg"),
        );
        let map = Value::Map(fred::types::Map::try_from(map).unwrap());
        let fields = Fields::from_reply(map).unwrap();
        assert_eq!(
            fields.field("url").as_deref(),
            Some("https://b.example/m.jpg")
        );
        assert!(parse_entry("m.jpg", &fields).is_err(), "no expires_at");

        assert!(!Fields::from_reply(Value::Null).unwrap().has_url());
        assert!(Fields::from_reply(Value::Array(vec![text("url")])).is_err());
        assert!(Fields::from_reply(text("a JSON string")).is_err());
    }
}
