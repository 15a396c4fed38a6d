//! The data model: streams, records, their Nango metadata, cursors and raw JSON.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The unit of cursor, locking and status: `(integration, connection, model, variant)`,
/// i.e. Nango's `Provider-Config-Key`, `Connection-Id`, model name and sync variant.
///
/// Stores accept any strings here (they are bound as values, never formatted into a
/// query); [`StreamKey::validate`] checks what Nango itself would accept before a
/// request is sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamKey {
    /// The integration id (`Provider-Config-Key`).
    pub integration: String,
    /// The connection id (`Connection-Id`).
    pub connection: String,
    /// The model name, for example `Ticket`.
    pub model: String,
    /// The sync variant; [`StreamKey::BASE_VARIANT`] when the sync has none.
    pub variant: String,
}

impl StreamKey {
    /// The variant name Nango uses for "no variant".
    pub const BASE_VARIANT: &'static str = "base";

    /// A stream of the base variant.
    pub fn new(
        integration: impl Into<String>,
        connection: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        StreamKey {
            integration: integration.into(),
            connection: connection.into(),
            model: model.into(),
            variant: Self::BASE_VARIANT.to_string(),
        }
    }

    /// The same stream with another variant (`base` or an empty string mean none).
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        let v: String = variant.into();
        self.variant = if v.is_empty() {
            Self::BASE_VARIANT.to_string()
        } else {
            v
        };
        self
    }

    /// The variant to send to Nango, `None` for the base variant.
    pub fn variant_param(&self) -> Option<&str> {
        (self.variant != Self::BASE_VARIANT).then_some(self.variant.as_str())
    }

    /// Check the key against the rules of Nango's records API: model
    /// `^[A-Z][a-zA-Z0-9_-]+$`, variant `^[a-zA-Z0-9_-]+$`, integration key
    /// `^[a-zA-Z0-9~:.@ _-]+$` and connection id `^[a-zA-Z0-9,.;:=+~[\]|@${}"'\\/_ -]+$`,
    /// both at most 255 characters.
    pub fn validate(&self) -> crate::Result<()> {
        // The header rules of Nango's API.
        let key_char = |c: char| c.is_ascii_alphanumeric() || "~:.@ _-".contains(c);
        let conn_char =
            |c: char| c.is_ascii_alphanumeric() || ",.;:=+~[]|@${}\"'\\/_ -".contains(c);
        let ok = |s: &str, allowed: &dyn Fn(char) -> bool| {
            !s.is_empty() && s.len() <= 255 && s.chars().all(allowed)
        };
        if !ok(&self.integration, &key_char) {
            return Err(crate::Error::invalid(
                "integration key",
                format!(
                    "{:?} must be 1 to 255 characters matching ^[a-zA-Z0-9~:.@ _-]+$",
                    self.integration
                ),
            ));
        }
        if !ok(&self.connection, &conn_char) {
            return Err(crate::Error::invalid(
                "connection id",
                format!(
                    "{:?} must be 1 to 255 characters matching ^[a-zA-Z0-9,.;:=+~\\[\\]|@${{}}\"'\\\\/_ -]+$",
                    self.connection
                ),
            ));
        }
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        let mut chars = self.model.chars();
        let model_ok = matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
            && self.model.len() >= 2
            && chars.all(word);
        if !model_ok {
            return Err(crate::Error::invalid(
                "model name",
                format!("{:?} must match ^[A-Z][a-zA-Z0-9_-]+$", self.model),
            ));
        }
        if self.variant.is_empty() || !self.variant.chars().all(word) {
            return Err(crate::Error::invalid(
                "variant",
                format!("{:?} must match ^[a-zA-Z0-9_-]+$", self.variant),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.integration, self.connection, self.model)?;
        if self.variant != Self::BASE_VARIANT {
            write!(f, "#{}", self.variant)?;
        }
        Ok(())
    }
}

/// An opaque position in a stream, as Nango gave it. Stored and sent verbatim, never
/// built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

impl Cursor {
    /// The cursor text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Cursor {
    fn from(s: &str) -> Self {
        Cursor(s.to_string())
    }
}

/// `_nango_metadata.last_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LastAction {
    /// The record was inserted (or saved again after a delete).
    Added,
    /// The record's payload changed.
    Updated,
    /// The record was deleted upstream.
    Deleted,
}

impl LastAction {
    /// The upper-case wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            LastAction::Added => "ADDED",
            LastAction::Updated => "UPDATED",
            LastAction::Deleted => "DELETED",
        }
    }

    /// Parse the upper-case wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(LastAction::Added),
            "UPDATED" => Some(LastAction::Updated),
            "DELETED" => Some(LastAction::Deleted),
            _ => None,
        }
    }

    /// A small integer code, for stores.
    pub fn code(self) -> u8 {
        match self {
            LastAction::Added => 1,
            LastAction::Updated => 2,
            LastAction::Deleted => 3,
        }
    }

    /// The inverse of [`LastAction::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(LastAction::Added),
            2 => Some(LastAction::Updated),
            3 => Some(LastAction::Deleted),
            _ => None,
        }
    }
}

/// A record's `_nango_metadata`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// When Nango first saw the record (reset by an undelete).
    pub first_seen_at: Timestamp,
    /// When the record last changed; the primary order of the stream.
    pub last_modified_at: Timestamp,
    /// What the last change was.
    pub last_action: LastAction,
    /// When the record was deleted, if it is.
    pub deleted_at: Option<Timestamp>,
    /// When Nango emptied the stored payload, if it did.
    pub pruned_at: Option<Timestamp>,
    /// This record's position in the stream.
    pub cursor: Cursor,
}

impl Metadata {
    /// Whether the record is deleted (a tombstone).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some() || self.last_action == LastAction::Deleted
    }
}

/// JSON text known to be valid (it was produced by a JSON parser or serializer), kept
/// verbatim: no `serde_json::Value` tree is ever built for a record on the sync path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Wrap text that came out of a JSON parser or serializer.
    ///
    /// The text is not validated here; use [`RawJson::parse`] for untrusted text.
    pub fn from_trusted(text: impl Into<Box<str>>) -> Self {
        RawJson(text.into())
    }

    /// Validate `text` as JSON and wrap it.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let text: String = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(RawJson(text.into_boxed_str()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Deserialize into any `serde` type.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Parse into a `serde_json::Value`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One record of a page: its id, its payload (the JSON object without
/// `_nango_metadata`, kept verbatim) and its parsed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record id (Nango always renders it as a string).
    pub id: String,
    /// The payload object, without `_nango_metadata`.
    pub payload: RawJson,
    /// Whether the payload has no field but `id` (the form of many deletes and of
    /// pruned records).
    pub payload_is_bare: bool,
    /// The parsed `_nango_metadata`.
    pub meta: Metadata,
}

impl Record {
    /// Whether this version is a delete.
    pub fn is_deleted(&self) -> bool {
        self.meta.is_deleted()
    }
}

/// A record as a store holds it: the payload the merge rule kept, the latest metadata,
/// and the sequence number of the commit that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record id.
    pub id: String,
    /// The payload object the merge rule kept (the last full payload for pruned and
    /// `{id}`-deleted records).
    pub payload: RawJson,
    /// The latest metadata.
    pub meta: Metadata,
    /// The store's sequence number of the commit that last changed this record.
    pub seq: u64,
}

impl StoredRecord {
    /// Whether the record is deleted (a tombstone).
    pub fn is_deleted(&self) -> bool {
        self.meta.is_deleted()
    }

    /// The record, unless it is a tombstone. A tombstone keeps the last payload the
    /// store held, so a typed read that must not see deleted records goes through this:
    /// `sink.get(&stream, id).await?.and_then(StoredRecord::live)`.
    pub fn live(self) -> Option<StoredRecord> {
        (!self.is_deleted()).then_some(self)
    }

    /// Deserialize the payload into the application's own type.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.payload.deserialize()
    }

    /// The record as one line of `nango-sync export`: the payload's fields in a canonical
    /// form (keys sorted by code point, numbers as `serde_json` prints them, so every
    /// store exports the same bytes even where one normalizes JSON, like Postgres
    /// `jsonb`), then `_nango_metadata` with timestamps in UTC and the cursor verbatim.
    pub fn to_export_line(&self) -> String {
        let mut out = String::with_capacity(self.payload.len() + 256);
        out.push('{');
        match serde_json::from_str::<serde_json::Value>(self.payload.as_str()) {
            Ok(serde_json::Value::Object(map)) => {
                let mut keys: Vec<&String> =
                    map.keys().filter(|k| *k != "_nango_metadata").collect();
                keys.sort_unstable();
                for k in keys {
                    write_json_string(&mut out, k);
                    out.push(':');
                    write_canonical(&mut out, &map[k]);
                    out.push(',');
                }
            }
            _ => {
                out.push_str("\"id\":");
                write_json_string(&mut out, &self.id);
                out.push(',');
            }
        }
        out.push_str("\"_nango_metadata\":");
        out.push_str(&serde_json::to_string(&self.meta).unwrap_or_default());
        out.push('}');
        out
    }
}

/// `v` as compact JSON with object keys sorted by code point at every level (the form
/// of `nango-sync export` payloads and of the webhook bodies Nango sends).
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, v);
    out
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Write `v` with object keys sorted by code point at every level, whatever the
/// `serde_json` map implementation of this build is.
fn write_canonical(out: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                write_canonical(out, &map[k]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leaves_out_tombstones() {
        let record = |action: LastAction| StoredRecord {
            id: "a".into(),
            payload: RawJson::from_trusted(r#"{"id":"a","title":"kept"}"#),
            meta: Metadata {
                first_seen_at: Timestamp::from_micros(1),
                last_modified_at: Timestamp::from_micros(2),
                last_action: action,
                deleted_at: None,
                pruned_at: None,
                cursor: Cursor("c".into()),
            },
            seq: 1,
        };
        let live = record(LastAction::Updated);
        assert_eq!(live.clone().live(), Some(live));
        assert_eq!(record(LastAction::Deleted).live(), None);
        let mut swept = record(LastAction::Updated);
        swept.meta.deleted_at = Some(Timestamp::from_micros(3));
        assert_eq!(swept.live(), None, "deleted_at alone makes a tombstone");
    }

    #[test]
    fn stream_key_validation_follows_nango_rules() {
        let ok = StreamKey::new("github", "acme-prod", "Ticket");
        assert!(ok.validate().is_ok());
        assert_eq!(ok.variant_param(), None);
        assert_eq!(ok.clone().with_variant("eu").variant_param(), Some("eu"));
        assert_eq!(ok.clone().with_variant("").variant, "base");
        for bad in [
            StreamKey::new("github", "acme", "ticket"),
            StreamKey::new("github", "acme", "T"),
            StreamKey::new("github", "acme", "Ti cket"),
            StreamKey::new("github", "acme", "Ticket").with_variant("a b"),
            StreamKey::new("", "acme", "Ticket"),
            StreamKey::new("github", "x".repeat(256), "Ticket"),
            StreamKey::new("github", "a\nb", "Ticket"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(StreamKey::new("github", "é", "Ticket").validate().is_err());
        assert!(
            StreamKey::new("github", "x".repeat(255), "Ticket")
                .validate()
                .is_ok()
        );
        let punctuated = StreamKey::new("git hub:x@y.z~", "a'b\";c=[d]|{e}$/\\", "Ticket");
        assert!(punctuated.validate().is_ok());
        assert!(
            StreamKey::new("git'hub", "acme", "Ticket")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn last_action_codes_round_trip() {
        for a in [LastAction::Added, LastAction::Updated, LastAction::Deleted] {
            assert_eq!(LastAction::from_code(a.code()), Some(a));
            assert_eq!(LastAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(LastAction::parse("added"), None);
    }

    #[test]
    fn export_line_is_canonical() {
        let rec = StoredRecord {
            id: "a".into(),
            payload: RawJson::from_trusted(
                r#"{"z":1,"id":"a","b":{"y":2,"x":[1,2]},"é":"\u00e9"}"#,
            ),
            meta: Metadata {
                first_seen_at: Timestamp::from_micros(1),
                last_modified_at: Timestamp::from_micros(2_000_000),
                last_action: LastAction::Updated,
                deleted_at: None,
                pruned_at: None,
                cursor: Cursor("Y3Vy".into()),
            },
            seq: 7,
        };
        assert_eq!(
            rec.to_export_line(),
            r#"{"b":{"x":[1,2],"y":2},"id":"a","z":1,"é":"é","_nango_metadata":{"first_seen_at":"1970-01-01T00:00:00.000001+00:00","last_modified_at":"1970-01-01T00:00:02+00:00","last_action":"UPDATED","deleted_at":null,"pruned_at":null,"cursor":"Y3Vy"}}"#
        );
    }
}
