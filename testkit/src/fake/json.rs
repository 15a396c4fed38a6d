//! Small JSON helpers: order-preserving object parsing, minifying and string escaping.
//!
//! `serde_json::Value` sorts object keys in this build, but Nango keeps a payload's key
//! order, so payloads are handled as text: an object is split into `(key, raw value)`
//! pairs in document order and written back compactly.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Append `s` as a JSON string literal.
pub(crate) fn push_str_lit(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Copy runs of bytes that need no escape at once; every escaped byte is ASCII, so
    // the runs end on character boundaries.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{:04x}", b));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A JSON string literal of `s`.
pub(crate) fn str_lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_str_lit(&mut out, s);
    out
}

/// Remove insignificant whitespace from valid JSON text.
pub(crate) fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

/// The members of a JSON object in document order, values as raw text.
pub(crate) struct OrderedObject(pub(crate) Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut members = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: Box<RawValue> = map.next_value()?;
                    members.push((k, v));
                }
                Ok(OrderedObject(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A record payload ready to store: its id as Nango renders it (a string) and the
/// compact payload text with `id` turned into a string in its original position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalized {
    pub(crate) id: String,
    pub(crate) text: String,
}

/// Normalize one record object given as JSON text.
pub(crate) fn normalize_record(text: &str) -> Result<Normalized, String> {
    let obj: OrderedObject =
        serde_json::from_str(text).map_err(|e| format!("a record must be a JSON object: {e}"))?;
    let mut id: Option<String> = None;
    let mut out = String::with_capacity(text.len() + 8);
    out.push('{');
    let mut first = true;
    for (k, v) in &obj.0 {
        if !first {
            out.push(',');
        }
        first = false;
        push_str_lit(&mut out, k);
        out.push(':');
        if k == "id" {
            let raw = v.get();
            let s = match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(serde_json::Value::Number(n)) => n.to_string(),
                Ok(serde_json::Value::Bool(true)) => "true".to_string(),
                _ => String::new(),
            };
            // Nango: `String(id)` with NUL bytes removed; a falsy id is refused.
            let s = s.replace('\0', "");
            push_str_lit(&mut out, &s);
            id = Some(s);
        } else {
            out.push_str(&minify(v.get()));
        }
    }
    out.push('}');
    match id {
        Some(id) if !id.is_empty() => Ok(Normalized { id, text: out }),
        _ => Err(format!(
            "a record needs a non-empty \"id\": {}",
            truncate(text, 120)
        )),
    }
}

/// Normalize a record given as a `serde_json::Value`.
pub(crate) fn normalize_value(v: &serde_json::Value) -> Result<Normalized, String> {
    normalize_record(&v.to_string())
}

fn truncate(s: &str, n: usize) -> &str {
    &s[..s.floor_char_boundary(n)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_ids_and_keeps_key_order() {
        let n = normalize_record(r#"{ "z": 1, "id": 1005, "a": { "b" : [1, 2] }, "s": "x y" }"#)
            .unwrap();
        assert_eq!(n.id, "1005");
        assert_eq!(n.text, r#"{"z":1,"id":"1005","a":{"b":[1,2]},"s":"x y"}"#);
        assert!(normalize_record(r#"{"a":1}"#).is_err());
        assert!(normalize_record(r#"{"id":""}"#).is_err());
        assert!(normalize_record("[1]").is_err());
        assert_eq!(str_lit("a\"b\\\u{1}é"), "\"a\\\"b\\\\\\u0001é\"");
    }
}
