//! The page parser this crate used before [`scan`](super::scan): `serde` visitors over
//! `serde_json`, every payload value read as a `RawValue`. Kept for the tests only, as the
//! reference the scanner is checked against (same pages, same kinds of error).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{MetaDe, Page, PageError, PageErrorKind, Place, snippet};
use crate::record::{Cursor, Metadata, RawJson, Record};

/// Parse a response body of `GET /records`, as [`Page::parse`] does.
pub(super) fn parse(body: &[u8]) -> Result<Page, PageError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        PageError::new(
            PageErrorKind::NotUtf8,
            format!("not UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let at = RefCell::new(None);
    let page = PageSeed { at: &at }
        .deserialize(&mut de)
        .map_err(|e| json_error(at.take(), &e))?;
    de.end().map_err(|e| {
        PageError::new(
            PageErrorKind::TrailingData,
            format!("trailing data after the page: {e}"),
        )
    })?;
    Ok(page)
}

/// The error of the JSON parser, classified, and named by the place it arose in.
fn json_error(at: Option<Place>, e: &serde_json::Error) -> PageError {
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
