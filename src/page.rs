//! Parsing a `GET /records` answer into a [`Page`] without building a JSON tree.
//!
//! Each record's fields are kept as raw JSON text; only `id` and `_nango_metadata` are
//! parsed. The payload written to the store is the record object without
//! `_nango_metadata`, with every value byte-for-byte as Nango sent it.
//!
//! The body is read in one pass by a scanner of its own (`page/scan.rs`): it checks the
//! JSON syntax as it goes, finds each record's fields and copies the payload in one
//! allocation of its final size. `serde_json` only decodes strings with escape sequences
//! (and reads a `_nango_metadata` that is not an object).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use crate::record::{Cursor, LastAction, Metadata, Record};
use crate::time::Timestamp;

#[cfg(test)]
mod reference;
mod scan;

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
        // One UTF-8 check of the whole body: every span the scanner cuts from it is
        // then a `str` without another check. `simdutf8` checks 16 to 64 bytes at a
        // time, where the standard library's check slows down at every non-ASCII
        // character (a 1 MB page with 3.5% non-ASCII bytes: 30 µs against 200 µs, a
        // seventh of the page's parse).
        let text = simdutf8::compat::from_utf8(body).map_err(|e| {
            PageError::new(
                PageErrorKind::NotUtf8,
                format!(
                    "the page is not valid UTF-8 (at byte {} of {})",
                    e.valid_up_to(),
                    body.len()
                ),
            )
        })?;
        scan::parse(text)
    }

    /// The `next_cursor` a `/records` body opens with, read without parsing the page:
    /// Nango writes it first (`{"next_cursor":"...","records":[...]}`), so the next
    /// page can be asked for while this one is parsed. `None` when the body does not
    /// open that way, when it is `null` (the last page), or when the string holds an
    /// escape sequence. A guess until the body is parsed: whoever acts on it checks it
    /// against the parsed page's `next_cursor`.
    pub(crate) fn next_cursor_hint(body: &[u8]) -> Option<Cursor> {
        fn skip_ws(b: &[u8], mut i: usize) -> usize {
            while b
                .get(i)
                .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            i
        }
        let mut i = skip_ws(body, 0);
        for token in [&b"{"[..], b"\"next_cursor\"", b":"] {
            if !body.get(i..)?.starts_with(token) {
                return None;
            }
            i = skip_ws(body, i + token.len());
        }
        let rest = body.get(i..)?.strip_prefix(b"\"")?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' || len == 0 {
            return None;
        }
        std::str::from_utf8(&rest[..len])
            .ok()
            .map(|c| Cursor(c.to_owned()))
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
/// and the field, put in front of the error's message.
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

/// The first 60 characters of `text`, for an error message.
fn snippet(text: &str) -> String {
    let s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        format!("{s}...")
    } else {
        s
    }
}

/// `_nango_metadata` as sent: its strings borrowed from the body where they have no
/// escape sequence.
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

    /// The hint is the parsed `next_cursor` wherever Nango's layout is kept, and
    /// nothing (never a wrong cursor) where it is not.
    #[test]
    fn next_cursor_hint_reads_the_opening_cursor_or_nothing() {
        let hint = |b: &str| Page::next_cursor_hint(b.as_bytes()).map(|c| c.0);
        let rec = format!(r#"{{"id":"a","_nango_metadata":{META}}}"#);
        for next in [Some("MjAyNi0xMS0yNnx8YWJj"), None] {
            let b = body(&[&rec], next);
            assert_eq!(hint(&b), next.map(str::to_owned), "{b}");
            assert_eq!(
                hint(&b),
                Page::parse(b.as_bytes()).unwrap().next_cursor.map(|c| c.0)
            );
        }
        assert_eq!(
            hint(" \n{ \"next_cursor\" :\t\"abc=\" ,\"records\":[]}").as_deref(),
            Some("abc=")
        );
        // Not Nango's layout, an escape, an empty or unfinished string, or no JSON.
        for b in [
            r#"{"records":[],"next_cursor":"abc"}"#,
            r#"{"next_cursor":"a\u0062c","records":[]}"#,
            r#"{"next_cursor":"","records":[]}"#,
            r#"{"next_cursor":"abc"#,
            r#"{"next_cursor":null,"records":[]}"#,
            r#"{"next_cursors":"abc","records":[]}"#,
            "[]",
            "",
        ] {
            assert_eq!(hint(b), None, "{b}");
        }
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
    fn invalid_utf8_deep_in_a_long_page_is_found_where_the_standard_check_finds_it() {
        // Long enough for the vectorized check, with valid non-ASCII text before the
        // fault: a stray continuation byte, an overlong form, a surrogate, a sequence
        // cut by the end of the body.
        let record = r#"{"id":"é","name":"Adébáyọ̀ Jürgen","_nango_metadata":{}}"#;
        let valid: String = std::iter::repeat_n(record, 200)
            .collect::<Vec<_>>()
            .join(",");
        for fault in [&b"\x80"[..], b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"] {
            for cut in [0, 1, 63, 64, 65, valid.len() / 2, valid.len()] {
                let mut body = valid.as_bytes()[..cut].to_vec();
                body.extend_from_slice(fault);
                body.extend_from_slice(&valid.as_bytes()[cut..]);
                let expected = std::str::from_utf8(&body).unwrap_err().valid_up_to();
                let err = Page::parse(&body).unwrap_err();
                assert_eq!(err.kind(), PageErrorKind::NotUtf8);
                assert!(
                    err.to_string().contains(&format!("at byte {expected} ")),
                    "{err}"
                );
            }
        }
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

    /// The test kit's seeded generator, with the picks the differential test makes.
    struct Rng(nango_sync_testkit::SplitMix64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0.below(n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Whitespace between tokens, mostly none.
    fn gap(r: &mut Rng) -> &'static str {
        r.pick(&["", "", "", "", " ", "\n  ", "\t", "\r\n"])
    }

    fn value(r: &mut Rng, depth: usize, out: &mut String) {
        let kind = if depth >= 3 { r.below(3) } else { r.below(5) };
        match kind {
            0 => out.push_str(r.pick(&[
                "0",
                "-12",
                "1.50",
                "3e7",
                "-0.5E-3",
                "12345678901234567890",
                "2E+2",
            ])),
            1 => out.push_str(r.pick(&[
                r#""plain""#,
                r#""""#,
                r#""a longer string, past eight bytes at a time""#,
                r#""esc \" \\ \/ \b\f\n\r\t""#,
                r#""caf\u00e9 and \ud83d\ude00""#,
                r#""lone \ud800 surrogate""#,
                "\"Zoë Ångström 日本語 🚀\"",
            ])),
            2 => out.push_str(r.pick(&["true", "false", "null"])),
            3 => {
                out.push('[');
                for i in 0..r.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap(r));
                    value(r, depth + 1, out);
                    out.push_str(gap(r));
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..r.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap(r));
                    out.push_str(r.pick(&[r#""k""#, r#""a\"b""#, r#""nested key""#]));
                    out.push(':');
                    value(r, depth + 1, out);
                }
                out.push('}');
            }
        }
    }

    fn record(r: &mut Rng, n: usize) -> String {
        let id = match r.below(5) {
            0 => format!("{n}"),
            1 => format!(r#""r\u0065c-{n}""#),
            _ => format!(r#""rec-{n}""#),
        };
        let meta = format!(
            r#"{{{}"first_seen_at":"2026-11-26T19:47:22.72838+00:00",{}"last_modified_at":"2026-11-2{}T19:47:22.7283{}+00:00","last_action":"{}",{}"{}":{}}}"#,
            r.pick(&["", "", r#""extra":[1,{"a":null}],"#]),
            r.pick(&[
                "",
                r#""deleted_at":null,"#,
                r#""deleted_at" : "2026-11-27T00:00:00+00:00","#
            ]),
            r.below(9),
            r.below(10),
            r.pick(&["ADDED", "UPDATED", "DELETED"]),
            r.pick(&[
                "",
                r#""pruned_at":null,"#,
                r#""pruned_at":"2026-11-28T00:00:00Z","#
            ]),
            r.pick(&["cursor", "cursor", r#"curs\u006fr"#]),
            r.pick(&[
                r#""Y3Vy""#,
                r#" "Y3\u0056y""#,
                r#""MjAyNi0xMS0yNlQxOTo0NzoyMi43MjgzOCswMDowMHx8""#,
            ]),
        );
        let id_key = r.pick(&[r#""id""#, r#""\u0069d""#]);
        let mut fields = vec![
            format!("{id_key}:{}{id}", gap(r)),
            format!(r#""_nango_metadata":{}{meta}"#, gap(r)),
        ];
        for k in 0..r.below(6) {
            let mut v = String::new();
            value(r, 0, &mut v);
            let key = match r.below(4) {
                0 => format!(r#""k\u00e9y{k}""#),
                _ => format!(r#""field_{k}""#),
            };
            fields.push(format!("{key}:{}{v}", gap(r)));
        }
        for i in (1..fields.len()).rev() {
            let j = r.below(i + 1);
            fields.swap(i, j);
        }
        let mut out = String::from("{");
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(gap(r));
            out.push_str(f);
            out.push_str(gap(r));
        }
        out.push('}');
        out
    }

    fn page_body(r: &mut Rng) -> String {
        let records: Vec<String> = (0..r.below(5)).map(|n| record(r, n)).collect();
        let next = r.pick(&["null", r#""bmV4dA==""#, r#""n\u0065xt""#]);
        let mut parts = vec![
            format!(r#""next_cursor":{next}"#),
            format!(r#""records":[{}]"#, records.join(&format!(",{}", gap(r)))),
        ];
        if r.below(4) == 0 {
            parts.push(r#""extra":{"ignored":[1,2,{"x":null}]}"#.to_string());
        }
        if r.below(2) == 0 {
            parts.reverse();
        }
        format!("{}{{{}}}{}", gap(r), parts.join(","), gap(r))
    }

    /// One change of a body: cut short, a byte replaced, removed or added.
    fn mutate(r: &mut Rng, body: &str) -> Vec<u8> {
        let mut b = body.as_bytes().to_vec();
        let at = r.below(b.len() + 1);
        let bytes = b"\"\\{}[],:01-.eE+ \x01tfnxu9";
        let byte = bytes[r.below(bytes.len())];
        match r.below(4) {
            0 => b.truncate(at),
            1 if at < b.len() => b[at] = byte,
            2 if at < b.len() => {
                b.remove(at);
            }
            _ => b.insert(at, byte),
        }
        b
    }

    /// The scanner against the `serde` parser it replaced, on generated pages and on
    /// thousands of broken variants of them: the same page, or an error of the same
    /// kind. One difference is meant: a body that ends inside a number is cut short
    /// for the scanner, where `serde_json` calls the number invalid.
    #[test]
    fn the_scanner_reads_pages_as_the_serde_parser_did() {
        let mut r = Rng(nango_sync_testkit::SplitMix64::new(7));
        let (mut pages, mut broken) = (0, 0);
        for _ in 0..400 {
            let body = page_body(&mut r);
            let scanned = Page::parse(body.as_bytes());
            let expected = reference::parse(body.as_bytes());
            assert_eq!(scanned, expected, "{body}");
            pages += scanned.as_ref().map_or(0, |_| 1);
            for _ in 0..25 {
                let input = mutate(&mut r, &body);
                let text = String::from_utf8_lossy(&input);
                match (Page::parse(&input), reference::parse(&input)) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                    (Err(a), Err(b)) => {
                        broken += 1;
                        let cut_in_number = a.kind() == PageErrorKind::Truncated
                            && b.kind() == PageErrorKind::Syntax
                            && b.to_string().contains("invalid number");
                        assert!(
                            a.kind() == b.kind() || cut_in_number,
                            "{text}\n  scanner: {a}\n  serde: {b}"
                        );
                    }
                    (a, b) => panic!("{text}\n  scanner: {a:?}\n  serde: {b:?}"),
                }
            }
        }
        // The generator makes valid pages and the changes break most of them.
        assert!(pages > 350, "{pages} valid pages");
        assert!(broken > 4000, "{broken} broken variants");
    }

    #[test]
    fn strings_are_scanned_eight_bytes_at_a_time_without_missing_a_stop() {
        // Every stop at every place of a chunk, after lead-ins of every length.
        for lead in 0..9 {
            for stop in [r#"\""#, r#"\n"#, r#"\u0041"#] {
                for pos in 0..17 {
                    let text = format!("{}{}{stop}", "a".repeat(lead), "b".repeat(pos));
                    let r = format!(r#"{{"id":"x","v":"{text}","_nango_metadata":{META}}}"#);
                    let page = Page::parse(body(&[&r], None).as_bytes()).unwrap();
                    assert_eq!(
                        page.records[0].payload.as_str(),
                        format!(r#"{{"id":"x","v":"{text}"}}"#)
                    );
                }
            }
            // A control character ends the scan where it stands.
            for pos in 0..17 {
                let text = format!("{}{}\u{1}", "a".repeat(lead), "b".repeat(pos));
                let r = format!(r#"{{"id":"x","v":"{text}","_nango_metadata":{META}}}"#);
                let err = Page::parse(body(&[&r], None).as_bytes()).unwrap_err();
                assert_eq!(err.kind(), PageErrorKind::Syntax, "{text:?}");
                assert!(err.to_string().contains("control character"), "{err}");
            }
        }
    }

    #[test]
    fn a_body_cut_short_anywhere_is_truncated() {
        let r = format!(
            r#"{{"id":"a","n":-1.5e+3,"s":"x\u00e9","l":[true,null,{{}}],"_nango_metadata":{META}}}"#
        );
        let body = body(&[&r], Some("bmV4dA=="));
        for end in 0..body.len() {
            let err = Page::parse(&body.as_bytes()[..end]).unwrap_err();
            assert!(err.is_truncated(), "cut at {end}: {err}");
        }
    }
}
