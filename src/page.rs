//! Parsing a `GET /records` answer into a [`Page`] without building a JSON tree.
//!
//! Each record's fields are kept as raw JSON text; only `id` and `_nango_metadata` are
//! parsed. The payload written to the store is the record object without
//! `_nango_metadata`, with every value byte-for-byte as Nango sent it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::record::{Cursor, LastAction, Metadata, RawJson, Record};
use crate::time::Timestamp;

/// One page of records and the cursor to read the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The records, in stream order.
    pub records: Vec<Record>,
    /// The cursor of the next page; `None` on the last page (the only end marker:
    /// a page may be short, or empty, while more records follow).
    pub next_cursor: Option<Cursor>,
}

/// Why a response body is not a page: what kind of problem, and a message naming the
/// record (its index, and its id when it was read) and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct PageError {
    kind: PageErrorKind,
    detail: String,
}

/// The kind of a [`PageError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageErrorKind {
    /// The body is not valid UTF-8.
    NotUtf8,
    /// The body ends before the page does: an answer cut short (usually a broken
    /// connection, worth trying again).
    Truncated,
    /// The body is not JSON.
    Syntax,
    /// The body is JSON but not a page of records: a missing field, a record without
    /// `id`, unreadable `_nango_metadata`, ...
    Invalid,
    /// Something follows the page in the body.
    TrailingData,
}

impl PageError {
    fn new(kind: PageErrorKind, detail: String) -> Self {
        PageError { kind, detail }
    }

    /// The error of the JSON parser, classified, and named by the place it arose in.
    fn json(at: Option<Place>, e: &serde_json::Error) -> Self {
        let kind = match e.classify() {
            serde_json::error::Category::Eof => PageErrorKind::Truncated,
            serde_json::error::Category::Data => PageErrorKind::Invalid,
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                PageErrorKind::Syntax
            }
        };
        let place = at.map(|p| p.to_string()).unwrap_or_default();
        let detail = match kind {
            PageErrorKind::Truncated => {
                format!("the body ends before the page does ({place}{e})")
            }
            _ => format!("{place}{e}"),
        };
        PageError::new(kind, detail)
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> PageErrorKind {
        self.kind
    }

    /// Whether the body was cut short (see [`PageErrorKind::Truncated`]).
    pub fn is_truncated(&self) -> bool {
        self.kind == PageErrorKind::Truncated
    }
}

impl Page {
    /// Parse a response body of `GET /records`.
    pub fn parse(body: &[u8]) -> Result<Page, PageError> {
        // One UTF-8 check of the whole body; parsing from `str` then validates no span
        // again (from bytes, every raw value and string would be checked on its own).
        let text = std::str::from_utf8(body).map_err(|e| {
            PageError::new(
                PageErrorKind::NotUtf8,
                format!(
                    "the page is not valid UTF-8 (at byte {} of {})",
                    e.valid_up_to(),
                    body.len()
                ),
            )
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let at = RefCell::new(None);
        let page = PageSeed { at: &at }
            .deserialize(&mut de)
            .map_err(|e| PageError::json(at.take(), &e))?;
        de.end().map_err(|e| {
            PageError::new(
                PageErrorKind::TrailingData,
                format!("trailing data after the page: {e}"),
            )
        })?;
        Ok(page)
    }

    /// The cursor a store should hold after committing this page: `next_cursor`, or on
    /// the last page the last record's cursor; `None` for an empty last page (the
    /// stream's cursor then stays where it was).
    pub fn end_cursor(&self) -> Option<&Cursor> {
        self.next_cursor
            .as_ref()
            .or_else(|| self.records.last().map(|r| &r.meta.cursor))
    }

    /// Whether this is the last page.
    pub fn is_last(&self) -> bool {
        self.next_cursor.is_none()
    }
}

/// Where in the page an error arose: the record (its index, its id when it was read)
/// and the field. Parsing errors keep their own type (and so their category: a body cut
/// short stays an end-of-input error); the place is noted beside them, only when one
/// happens, and put in front of the message.
struct Place {
    index: usize,
    id: Option<String>,
    field: Option<&'static str>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}", self.index)?;
        if let Some(id) = &self.id {
            write!(f, " (id {id:?})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = self.field {
            write!(f, "{field}: ")?;
        }
        Ok(())
    }
}

/// Where the place of an error is noted.
type At<'a> = &'a RefCell<Option<Place>>;

struct PageSeed<'a> {
    at: At<'a>,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = Page;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Page, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = Page;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object {\"next_cursor\": ..., \"records\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Page, A::Error> {
        let mut next_cursor: Option<Option<Cursor>> = None;
        let mut records: Option<Vec<Record>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "next_cursor" => {
                    let c: Option<Key<'de>> = map.next_value()?;
                    next_cursor = Some(c.map(|k| Cursor(k.0.into_owned())));
                }
                "records" => records = Some(map.next_value_seed(RecordsSeed { at: self.at })?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let records = records.ok_or_else(|| de::Error::missing_field("records"))?;
        let next_cursor = next_cursor.ok_or_else(|| de::Error::missing_field("next_cursor"))?;
        if matches!(&next_cursor, Some(c) if c.0.is_empty()) {
            return Err(de::Error::custom("next_cursor is an empty string"));
        }
        Ok(Page {
            records,
            next_cursor,
        })
    }
}

/// A string that borrows from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct RecordsSeed<'a> {
    at: At<'a>,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Record>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(10_000));
        while let Some(r) = seq.next_element_seed(RecordSeed {
            index: out.len(),
            at: self.at,
        })? {
            out.push(r);
        }
        Ok(out)
    }
}

struct RecordSeed<'a> {
    index: usize,
    at: At<'a>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_map(self)
    }
}

/// The `id` field: a string, or a number rendered as its JSON text.
struct IdValue(String);

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                let s: Key<'_> = serde_json::from_str(text).map_err(de::Error::custom)?;
                Ok(IdValue(s.0.into_owned()))
            }
            Some(b'-' | b'0'..=b'9') => Ok(IdValue(text.to_owned())),
            _ => Err(de::Error::custom(format!(
                "id must be a string or a number, not {}",
                snippet(text)
            ))),
        }
    }
}

fn snippet(text: &str) -> String {
    let s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        format!("{s}...")
    } else {
        s
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {} to be a JSON object", self.index)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        // Note where an error arose (on the error path only) and pass the error on as
        // it is.
        let place = |id: &Option<String>, field: Option<&'static str>| {
            let at = self.at;
            let index = self.index;
            let id = id.clone();
            move |e: A::Error| {
                *at.borrow_mut() = Some(Place { index, id, field });
                e
            }
        };
        let mut id: Option<String> = None;
        let mut meta: Option<Metadata> = None;
        let mut payload = String::with_capacity(256);
        payload.push('{');
        let mut fields = 0usize;
        while let Some(key) = map
            .next_key::<Key<'de>>()
            .map_err(|e| place(&id, None)(e))?
        {
            match key.0.as_ref() {
                "_nango_metadata" => {
                    let field = Some("_nango_metadata");
                    let m: MetaDe<'de> = map.next_value().map_err(|e| place(&id, field)(e))?;
                    let m = m
                        .into_metadata()
                        .map_err(|e| place(&id, field)(de::Error::custom(e)))?;
                    meta = Some(m);
                }
                "id" => {
                    if id.is_some() {
                        return Err(place(&id, None)(de::Error::custom("duplicate id field")));
                    }
                    let v: IdValue = map.next_value().map_err(|e| place(&id, None)(e))?;
                    if v.0.is_empty() {
                        return Err(place(&None, None)(de::Error::custom(
                            "id is an empty string",
                        )));
                    }
                    if fields > 0 {
                        payload.push(',');
                    }
                    payload.push_str("\"id\":");
                    write_json_str(&mut payload, &v.0);
                    fields += 1;
                    id = Some(v.0);
                }
                other => {
                    let raw: &'de RawValue = map.next_value().map_err(|e| place(&id, None)(e))?;
                    if fields > 0 {
                        payload.push(',');
                    }
                    match &key.0 {
                        // Borrowed: the key had no escape sequence, so its text needs none.
                        Cow::Borrowed(k) => {
                            payload.push('"');
                            payload.push_str(k);
                            payload.push('"');
                        }
                        Cow::Owned(_) => write_json_str(&mut payload, other),
                    }
                    payload.push(':');
                    payload.push_str(raw.get());
                    fields += 1;
                }
            }
        }
        payload.push('}');
        let Some(id) = id else {
            return Err(place(&None, None)(de::Error::custom("missing id")));
        };
        let Some(meta) = meta else {
            return Err(place(&Some(id), None)(de::Error::custom(
                "missing _nango_metadata",
            )));
        };
        Ok(Record {
            id,
            payload: RawJson::from_trusted(payload),
            payload_is_bare: fields == 1,
            meta,
        })
    }
}

fn write_json_str(out: &mut String, s: &str) {
    // serde_json's escaping; writing into a String cannot fail.
    let escaped = serde_json::to_string(s).unwrap_or_default();
    let _ = out.write_str(&escaped);
}

#[derive(Deserialize)]
struct MetaDe<'a> {
    #[serde(borrow)]
    first_seen_at: Cow<'a, str>,
    #[serde(borrow)]
    last_modified_at: Cow<'a, str>,
    #[serde(borrow)]
    last_action: Cow<'a, str>,
    #[serde(borrow, default)]
    deleted_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pruned_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cursor: Cow<'a, str>,
}

impl MetaDe<'_> {
    fn into_metadata(self) -> Result<Metadata, String> {
        let ts = |name: &str, k: &str| Timestamp::parse(k).map_err(|e| format!("{name}: {e}"));
        let last_action = LastAction::parse(&self.last_action)
            .ok_or_else(|| format!("unknown last_action {:?}", snippet(&self.last_action)))?;
        if self.cursor.is_empty() {
            return Err("cursor is an empty string".into());
        }
        Ok(Metadata {
            first_seen_at: ts("first_seen_at", &self.first_seen_at)?,
            last_modified_at: ts("last_modified_at", &self.last_modified_at)?,
            last_action,
            deleted_at: self
                .deleted_at
                .as_ref()
                .map(|k| ts("deleted_at", k))
                .transpose()?,
            pruned_at: self
                .pruned_at
                .as_ref()
                .map(|k| ts("pruned_at", k))
                .transpose()?,
            cursor: Cursor(self.cursor.into_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{"first_seen_at":"2026-11-26T19:47:22.72838+00:00","last_modified_at":"2026-11-26T19:47:22.72838+00:00","last_action":"ADDED","deleted_at":null,"pruned_at":null,"cursor":"Y3Vy"}"#;

    fn body(records: &[&str], next: Option<&str>) -> String {
        let next = next.map(|c| format!("\"{c}\"")).unwrap_or("null".into());
        format!(
            r#"{{"next_cursor":{next},"records":[{}]}}"#,
            records.join(",")
        )
    }

    #[test]
    fn keeps_values_verbatim_and_drops_metadata_from_the_payload() {
        let r = format!(
            r#"{{"id":"tk-001","title":"Caf\u00e9 \"menu\"","n":1.50,"nested":{{"a":[1, 2]}},"_nango_metadata":{META}}}"#
        );
        let page = Page::parse(body(&[&r], Some("bmV4dA==")).as_bytes()).unwrap();
        assert_eq!(page.next_cursor, Some(Cursor("bmV4dA==".into())));
        let rec = &page.records[0];
        assert_eq!(rec.id, "tk-001");
        assert_eq!(
            rec.payload.as_str(),
            r#"{"id":"tk-001","title":"Caf\u00e9 \"menu\"","n":1.50,"nested":{"a":[1, 2]}}"#
        );
        assert!(!rec.payload_is_bare);
        assert_eq!(rec.meta.last_action, LastAction::Added);
        assert_eq!(rec.meta.cursor.as_str(), "Y3Vy");
        assert_eq!(
            rec.meta.last_modified_at,
            Timestamp::parse("2026-11-26T19:47:22.72838Z").unwrap()
        );
    }

    #[test]
    fn bare_payloads_and_numeric_ids() {
        let a = format!(r#"{{"id":"x","_nango_metadata":{META}}}"#);
        let b = format!(r#"{{"id":1005,"t":true,"_nango_metadata":{META}}}"#);
        let c = format!(r#"{{"_nango_metadata":{META},"id":"y"}}"#);
        let page = Page::parse(body(&[&a, &b, &c], None).as_bytes()).unwrap();
        assert!(page.records[0].payload_is_bare);
        assert_eq!(page.records[1].id, "1005");
        assert_eq!(
            page.records[1].payload.as_str(),
            r#"{"id":"1005","t":true}"#
        );
        assert!(page.records[2].payload_is_bare);
        assert_eq!(page.records[2].payload.as_str(), r#"{"id":"y"}"#);
        assert_eq!(page.end_cursor(), Some(&Cursor("Y3Vy".into())));
    }

    #[test]
    fn escaped_keys_are_re_escaped() {
        let r = format!(r#"{{"id":"x","a\"b\u00e9":1,"_nango_metadata":{META}}}"#);
        let page = Page::parse(body(&[&r], None).as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_str(page.records[0].payload.as_str()).unwrap();
        assert_eq!(v["a\"bé"], 1);
    }

    #[test]
    fn invalid_utf8_is_named_with_its_position() {
        let mut body = br#"{"next_cursor":null,"records":[{"id":"a","x":"caf"#.to_vec();
        let at = body.len();
        body.extend_from_slice(b"\xff\"}]}");
        let err = Page::parse(&body).unwrap_err();
        assert_eq!(err.kind(), PageErrorKind::NotUtf8);
        let err = err.to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
        assert!(err.contains(&format!("at byte {at}")), "{err}");
    }

    #[test]
    fn empty_page() {
        let page = Page::parse(br#"{"next_cursor":null,"records":[]}"#).unwrap();
        assert!(page.records.is_empty() && page.is_last() && page.end_cursor().is_none());
        let page = Page::parse(br#"{"records":[],"next_cursor":"abc","extra":1}"#).unwrap();
        assert_eq!(page.end_cursor(), Some(&Cursor("abc".into())));
    }

    #[test]
    fn errors_name_the_record_and_the_problem() {
        use PageErrorKind::*;
        let ok = format!(r#"{{"id":"ok","_nango_metadata":{META}}}"#);
        let cases: Vec<(String, PageErrorKind, &str)> = vec![
            (
                body(
                    &[&format!(r#"{{"title":"x","_nango_metadata":{META}}}"#)],
                    None,
                ),
                Invalid,
                "record 0: missing id",
            ),
            (
                body(&[r#"{"id":"a"}"#], None),
                Invalid,
                "record 0 (id \"a\"): missing _nango_metadata",
            ),
            (
                body(&[r#"[1,2]"#], None),
                Invalid,
                "record 0 to be a JSON object",
            ),
            (
                body(&[r#""str""#], None),
                Invalid,
                "record 0 to be a JSON object",
            ),
            (
                body(
                    &[&ok, &format!(r#"{{"id":{{}},"_nango_metadata":{META}}}"#)],
                    None,
                ),
                Invalid,
                "record 1: id must be a string or a number",
            ),
            (
                body(
                    &[&format!(
                        r#"{{"id":"a","_nango_metadata":{}}}"#,
                        META.replace("ADDED", "MOVED")
                    )],
                    None,
                ),
                Invalid,
                "record 0 (id \"a\"): _nango_metadata: unknown last_action \"MOVED\"",
            ),
            (
                body(
                    &[&format!(
                        r#"{{"id":"a","_nango_metadata":{}}}"#,
                        META.replace("22.72838+00:00\",\"last_action", "xx\",\"last_action")
                    )],
                    None,
                ),
                Invalid,
                "last_modified_at: invalid timestamp",
            ),
            (
                r#"{"next_cursor":null}"#.to_string(),
                Invalid,
                "missing field `records`",
            ),
            (
                r#"{"records":[]}"#.to_string(),
                Invalid,
                "missing field `next_cursor`",
            ),
            (
                r#"{"next_cursor":null,"records":[{"id":"a","#.to_string(),
                Truncated,
                "EOF",
            ),
            (
                format!(r#"{{"next_cursor":"n","records":[{ok}"#),
                Truncated,
                "EOF",
            ),
            (
                "<html><body>Nango</body></html>".to_string(),
                Syntax,
                "expected value",
            ),
            (
                r#"{"next_cursor":null,"records":[]} x"#.to_string(),
                TrailingData,
                "trailing",
            ),
        ];
        for (input, kind, expected) in cases {
            let err = Page::parse(input.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), kind, "{input}\n  gave {err}");
            assert_eq!(err.is_truncated(), kind == Truncated, "{input}");
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "{input}\n  gave {text}\n  expected {expected}"
            );
        }
    }
}
