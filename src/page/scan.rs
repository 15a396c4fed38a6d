//! The scanner behind [`Page::parse`]: one pass over a `/records` body that checks the
//! JSON syntax as it goes, finds each record's fields and copies its payload.
//!
//! Values that only travel into the payload are checked and skipped here (strings eight
//! bytes at a time), never decoded. `_nango_metadata`, an object of known fields, is read
//! here too. `serde_json` decodes the strings that carry escape sequences when their text
//! is needed (a key, an id, a metadata field, the next cursor), and reads a
//! `_nango_metadata` that is not an object, so that it fails as a `serde` reading would.
//!
//! A body cut short anywhere, even inside a number, is [`PageErrorKind::Truncated`]:
//! it is the end of the input that is wrong, not the text before it.

use std::borrow::Cow;

use super::{MetaDe, Page, PageError, PageErrorKind, Place, snippet};
use crate::record::{Cursor, Metadata, RawJson, Record};

/// Parse `text`, a whole `GET /records` body.
pub(super) fn parse(text: &str) -> Result<Page, PageError> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        stack: Vec::new(),
        fields: Vec::new(),
    };
    let page = s.page()?;
    s.ws();
    if s.pos < s.bytes.len() {
        return Err(PageError::new(
            PageErrorKind::TrailingData,
            format!(
                "trailing data after the page: {} at byte {}",
                snippet(&text[s.pos..]),
                s.pos
            ),
        ));
    }
    Ok(page)
}

/// What went wrong, and at which byte of the body. Made a [`PageError`] (with the place
/// in the page, when it is known) by [`Fail::error`]. Boxed, so that the scanner's
/// results stay small on the path where nothing fails.
struct Fail(Box<Failure>);

struct Failure {
    kind: PageErrorKind,
    message: Cow<'static, str>,
    at: usize,
}

impl Fail {
    fn new(kind: PageErrorKind, message: Cow<'static, str>, at: usize) -> Fail {
        Fail(Box::new(Failure { kind, message, at }))
    }

    fn eof(what: &'static str, at: usize) -> Fail {
        let message = format!("EOF while parsing {what}");
        Fail::new(PageErrorKind::Truncated, Cow::Owned(message), at)
    }

    fn syntax(message: &'static str, at: usize) -> Fail {
        Fail::new(PageErrorKind::Syntax, Cow::Borrowed(message), at)
    }

    fn invalid(message: impl Into<Cow<'static, str>>, at: usize) -> Fail {
        Fail::new(PageErrorKind::Invalid, message.into(), at)
    }

    /// An error of `serde_json`, which read a piece of the body and stopped at byte `at`
    /// of the body.
    fn json(e: &serde_json::Error, at: usize) -> Fail {
        let kind = match e.classify() {
            serde_json::error::Category::Eof => PageErrorKind::Truncated,
            serde_json::error::Category::Data => PageErrorKind::Invalid,
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                PageErrorKind::Syntax
            }
        };
        // Its own position is in the piece it was given; this one is in the body.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
        Fail::new(kind, Cow::Owned(message), at)
    }

    /// The same failure with its kind changed (a string that cannot be decoded is a
    /// syntax error as a key, an invalid id as the value of `id`).
    fn with_kind(mut self, kind: PageErrorKind) -> Fail {
        self.0.kind = kind;
        self
    }

    fn error(self, place: Option<Place>) -> PageError {
        let place = place.map(|p| p.to_string()).unwrap_or_default();
        let Failure { kind, message, at } = *self.0;
        let detail = match kind {
            PageErrorKind::Truncated => {
                format!("the body ends before the page does ({place}{message} at byte {at})")
            }
            _ => format!("{place}{message} at byte {at}"),
        };
        PageError::new(kind, detail)
    }
}

impl From<Fail> for PageError {
    fn from(f: Fail) -> PageError {
        f.error(None)
    }
}

/// A string of the body: the bytes between its quotes, and how many escape sequences
/// they hold. (A count, not a `bool`: with no padding in `Str`, a `Result<Str, Fail>` is
/// moved as whole words; with a `bool`, its padding was moved by overlapping 4-byte
/// copies, which the CPU cannot forward to the loads that follow.)
#[derive(Clone, Copy)]
struct Str {
    start: usize,
    end: usize,
    escapes: usize,
}

/// A field of the record being read, in the order of the body.
enum Field<'a> {
    /// A member whose text in the body is its text in the payload (`"key":value`, no
    /// whitespace, no escape sequence in the key, an id that is a plain string): its
    /// span in the body.
    Verbatim(usize, usize),
    /// `id`, written as a JSON string (`id_json`).
    Id,
    /// Any other field but `_nango_metadata`: its key as JSON text and its value's
    /// span in the body.
    Other {
        key: Cow<'a, str>,
        value: (usize, usize),
    },
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The arrays and objects around the value being skipped (kept between values).
    stack: Vec<u8>,
    /// The fields of the record being read (kept between records).
    fields: Vec<Field<'a>>,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in each byte of `w` (read little-endian) that is `"`,
/// `\` or a control character, and possibly in bytes above the first such byte, never
/// below it: its lowest set bit is the first byte a string scan must stop at.
fn stops(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    quote | backslash | control
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    /// The string starting at `self.pos` (its opening quote).
    #[inline(always)]
    fn string(&mut self) -> Result<Str, Fail> {
        let b = self.bytes;
        let start = self.pos + 1;
        let mut i = start;
        let mut escapes = 0;
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let m = stops(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match b.get(i) {
                None => return Err(Fail::eof("a string", i)),
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(Str {
                        start,
                        end: i,
                        escapes,
                    });
                }
                Some(b'\\') => {
                    escapes += 1;
                    i = self.escape(i + 1)?;
                }
                Some(&c) if c < 0x20 => {
                    return Err(Fail::syntax(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                        i,
                    ));
                }
                Some(_) => i += 1,
            }
        }
    }

    /// The escape sequence whose letter is at `i`; returns the index after it.
    fn escape(&self, i: usize) -> Result<usize, Fail> {
        match self.bytes.get(i) {
            None => Err(Fail::eof("a string", i)),
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 1),
            Some(b'u') => {
                for k in i + 1..i + 5 {
                    match self.bytes.get(k) {
                        None => return Err(Fail::eof("a string", k)),
                        Some(c) if c.is_ascii_hexdigit() => {}
                        Some(_) => return Err(Fail::syntax("invalid escape", k)),
                    }
                }
                Ok(i + 5)
            }
            Some(_) => Err(Fail::syntax("invalid escape", i)),
        }
    }

    /// The text of a string: borrowed when it has no escape sequence, else decoded by
    /// `serde_json` (which also refuses escapes of lone surrogates); a failure to decode
    /// is a syntax error.
    #[inline(always)]
    fn text_of(&self, s: Str) -> Result<Cow<'a, str>, Fail> {
        if s.escapes == 0 {
            return Ok(Cow::Borrowed(&self.text[s.start..s.end]));
        }
        serde_json::from_str::<String>(&self.text[s.start - 1..=s.end])
            .map(Cow::Owned)
            .map_err(|e| Fail::json(&e, s.start - 1).with_kind(PageErrorKind::Syntax))
    }

    /// The number starting at `self.pos`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<(), Fail> {
        let b = self.bytes;
        let mut i = self.pos;
        if b[i] == b'-' {
            i += 1;
        }
        let digits = |mut i: usize| -> Result<usize, Fail> {
            match b.get(i) {
                None => return Err(Fail::eof("a number", i)),
                Some(b'0'..=b'9') => i += 1,
                Some(_) => return Err(Fail::syntax("invalid number", i)),
            }
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            Ok(i)
        };
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if let Some(b'0'..=b'9') = b.get(i) {
                    return Err(Fail::syntax("invalid number", i));
                }
            }
            _ => i = digits(i)?,
        }
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = digits(i)?;
        }
        self.pos = i;
        Ok(())
    }

    /// `true`, `false` or `null` at `self.pos`.
    fn literal(&mut self, word: &'static [u8]) -> Result<(), Fail> {
        for (k, &want) in word.iter().enumerate() {
            match self.bytes.get(self.pos + k) {
                None => return Err(Fail::eof("a value", self.pos + k)),
                Some(&c) if c == want => {}
                Some(_) => return Err(Fail::syntax("expected ident", self.pos + k)),
            }
        }
        self.pos += word.len();
        Ok(())
    }

    /// A scalar (string, number, literal) starting at `first`; `None` for `[`, `{` and
    /// what starts no value.
    fn scalar(&mut self, first: u8) -> Option<Result<(), Fail>> {
        Some(match first {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => return None,
        })
    }

    /// Check and pass over one value, whatever it holds.
    fn skip_value(&mut self) -> Result<(), Fail> {
        self.stack.clear();
        loop {
            // A value, or the opening of an array or object.
            let Some(first) = self.peek() else {
                return Err(Fail::eof("a value", self.pos));
            };
            match first {
                open @ (b'[' | b'{') => {
                    self.pos += 1;
                    let close = if open == b'[' { b']' } else { b'}' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        self.stack.push(open);
                        if open == b'{' {
                            self.skip_key()?;
                        }
                        continue;
                    }
                }
                _ => match self.scalar(first) {
                    Some(r) => r?,
                    None => return Err(Fail::syntax("expected value", self.pos)),
                },
            }
            // After a value: close what ends here, then a comma leads to the next value.
            loop {
                let Some(&open) = self.stack.last() else {
                    return Ok(());
                };
                match (self.peek(), open) {
                    (Some(b','), _) => {
                        self.pos += 1;
                        if open == b'{' {
                            self.skip_key()?;
                        }
                        break;
                    }
                    (Some(b']'), b'[') | (Some(b'}'), b'{') => {
                        self.pos += 1;
                        self.stack.pop();
                    }
                    (Some(_), b'[') => return Err(Fail::syntax("expected `,` or `]`", self.pos)),
                    (Some(_), _) => return Err(Fail::syntax("expected `,` or `}`", self.pos)),
                    (None, b'[') => return Err(Fail::eof("a list", self.pos)),
                    (None, _) => return Err(Fail::eof("an object", self.pos)),
                }
            }
        }
    }

    /// A key and its colon inside a skipped object.
    #[inline(always)]
    fn skip_key(&mut self) -> Result<(), Fail> {
        match self.peek() {
            Some(b'"') => self.string().map(drop)?,
            Some(_) => return Err(Fail::syntax("key must be a string", self.pos)),
            None => return Err(Fail::eof("an object", self.pos)),
        }
        self.colon()
    }

    #[inline(always)]
    fn colon(&mut self) -> Result<(), Fail> {
        match self.peek() {
            Some(b':') => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(Fail::syntax("expected `:`", self.pos)),
            None => Err(Fail::eof("an object", self.pos)),
        }
    }

    /// The key of an object's member (and its colon), at the start of the object or
    /// after a comma; `Ok(None)` when the object ends here instead.
    fn key(&mut self, first: bool) -> Result<Option<(Str, Cow<'a, str>)>, Fail> {
        let next = self.peek();
        if next == Some(b'}') {
            self.pos += 1;
            return Ok(None);
        }
        if !first {
            match next {
                Some(b',') => self.pos += 1,
                Some(_) => return Err(Fail::syntax("expected `,` or `}`", self.pos)),
                None => return Err(Fail::eof("an object", self.pos)),
            }
        }
        match self.peek() {
            Some(b'"') => {}
            Some(_) => return Err(Fail::syntax("key must be a string", self.pos)),
            None => return Err(Fail::eof("an object", self.pos)),
        }
        let s = self.string()?;
        let text = self.text_of(s)?;
        self.colon()?;
        Ok(Some((s, text)))
    }

    /// What a value of the wrong type is: read it (so a broken one is a syntax error,
    /// as a parser would find it first) and name its type.
    fn wrong_type(&mut self, expected: &str) -> Fail {
        let at = self.pos;
        let what = match self.peek() {
            None => return Fail::eof("a value", self.pos),
            Some(b'[') => "an array",
            Some(b'{') => "an object",
            Some(first) => {
                let what = match first {
                    b'"' => "a string",
                    b't' | b'f' => "a boolean",
                    b'n' => "null",
                    _ => "a number",
                };
                match self.scalar(first) {
                    Some(Ok(())) => what,
                    Some(Err(e)) => return e,
                    None => return Fail::syntax("expected value", self.pos),
                }
            }
        };
        Fail::invalid(format!("invalid type: {what}, expected {expected}"), at)
    }

    fn page(&mut self) -> Result<Page, PageError> {
        if self.peek() != Some(b'{') {
            return Err(self
                .wrong_type("an object {\"next_cursor\": ..., \"records\": [...]}")
                .into());
        }
        self.pos += 1;
        let mut next_cursor: Option<Option<Cursor>> = None;
        let mut records: Option<Vec<Record>> = None;
        let mut first = true;
        while let Some((_, key)) = self.key(first)? {
            first = false;
            match key.as_ref() {
                "next_cursor" => next_cursor = Some(self.next_cursor()?),
                "records" => records = Some(self.records()?),
                _ => self.skip_value()?,
            }
        }
        let at = self.pos;
        let records = records.ok_or_else(|| Fail::invalid("missing field `records`", at))?;
        let next_cursor =
            next_cursor.ok_or_else(|| Fail::invalid("missing field `next_cursor`", at))?;
        if matches!(&next_cursor, Some(c) if c.0.is_empty()) {
            return Err(Fail::invalid("next_cursor is an empty string", at).into());
        }
        Ok(Page {
            records,
            next_cursor,
        })
    }

    fn next_cursor(&mut self) -> Result<Option<Cursor>, Fail> {
        match self.peek() {
            Some(b'n') => self.literal(b"null").map(|()| None),
            Some(b'"') => {
                let s = self.string()?;
                Ok(Some(Cursor(self.text_of(s)?.into_owned())))
            }
            _ => Err(self.wrong_type("a string or null")),
        }
    }

    fn records(&mut self) -> Result<Vec<Record>, PageError> {
        if self.peek() != Some(b'[') {
            return Err(self.wrong_type("an array of records").into());
        }
        self.pos += 1;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(self.record(out.len())?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(_) => return Err(Fail::syntax("expected `,` or `]`", self.pos).into()),
                None => return Err(Fail::eof("a list", self.pos).into()),
            }
        }
    }

    fn record(&mut self, index: usize) -> Result<Record, PageError> {
        if self.peek() != Some(b'{') {
            let expected = format!("record {index} to be a JSON object");
            return Err(self.wrong_type(&expected).into());
        }
        let begin = self.pos;
        self.pos += 1;
        // The error, named by the record and the field it arose in (on the error path
        // only: the id is cloned there).
        let place = |id: &Option<String>, field: Option<&'static str>, f: Fail| {
            f.error(Some(Place {
                index,
                id: id.clone(),
                field,
            }))
        };
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        let mut id: Option<String> = None;
        // The id as JSON text, as the payload holds it.
        let mut id_json: Cow<'a, str> = Cow::Borrowed("");
        let mut meta: Option<Metadata> = None;
        let mut first = true;
        while let Some((key_str, key)) = self.key(first).map_err(|f| place(&id, None, f))? {
            first = false;
            match key.as_ref() {
                "_nango_metadata" => {
                    let field = Some("_nango_metadata");
                    meta = Some(self.metadata().map_err(|f| place(&id, field, f))?);
                }
                "id" => {
                    if id.is_some() {
                        return Err(place(
                            &id,
                            None,
                            Fail::invalid("duplicate id field", key_str.start),
                        ));
                    }
                    self.ws();
                    let start = self.pos;
                    let (value, json) = self.id().map_err(|f| place(&id, None, f))?;
                    if value.is_empty() {
                        return Err(place(
                            &None,
                            None,
                            Fail::invalid("id is an empty string", key_str.start),
                        ));
                    }
                    let compact = matches!((&key, &json), (Cow::Borrowed(_), Cow::Borrowed(_)))
                        && start == key_str.end + 2;
                    fields.push(if compact {
                        Field::Verbatim(key_str.start - 1, self.pos)
                    } else {
                        Field::Id
                    });
                    id = Some(value);
                    id_json = json;
                }
                _ => {
                    self.ws();
                    let start = self.pos;
                    self.skip_value().map_err(|f| place(&id, None, f))?;
                    let value = (start, self.pos);
                    fields.push(match key {
                        // No escape sequence: the key's text is its JSON text.
                        Cow::Borrowed(_) if start == key_str.end + 2 => {
                            Field::Verbatim(key_str.start - 1, self.pos)
                        }
                        Cow::Borrowed(_) => Field::Other {
                            key: Cow::Borrowed(&self.text[key_str.start - 1..=key_str.end]),
                            value,
                        },
                        Cow::Owned(k) => Field::Other {
                            key: Cow::Owned(json_string(&k)),
                            value,
                        },
                    });
                }
            }
        }
        let Some(id) = id else {
            return Err(place(&None, None, Fail::invalid("missing id", begin)));
        };
        let Some(meta) = meta else {
            return Err(place(
                &Some(id),
                None,
                Fail::invalid("missing _nango_metadata", begin),
            ));
        };
        let payload = self.payload(&fields, &id_json);
        let payload_is_bare = fields.len() == 1;
        self.fields = fields;
        Ok(Record {
            id,
            payload: RawJson::from_trusted(payload),
            payload_is_bare,
            meta,
        })
    }

    /// The payload: `{`, each field but `_nango_metadata` as `key:value`, `}`, written
    /// into one allocation of its final size. Verbatim members that follow each other in
    /// the body (with only a comma between them) are copied as one piece.
    fn payload(&self, fields: &[Field<'a>], id_json: &str) -> String {
        const ID_KEY: &str = "\"id\":";
        let len = 2
            + fields.len().saturating_sub(1)
            + fields
                .iter()
                .map(|f| match f {
                    Field::Verbatim(start, end) => end - start,
                    Field::Id => ID_KEY.len() + id_json.len(),
                    Field::Other { key, value } => key.len() + 1 + (value.1 - value.0),
                })
                .sum::<usize>();
        let mut out = String::with_capacity(len);
        out.push('{');
        let mut i = 0;
        while let Some(f) = fields.get(i) {
            if i > 0 {
                out.push(',');
            }
            i += 1;
            match f {
                Field::Verbatim(start, end) => {
                    let mut end = *end;
                    while let Some(Field::Verbatim(next, next_end)) = fields.get(i) {
                        if *next != end + 1 {
                            break;
                        }
                        end = *next_end;
                        i += 1;
                    }
                    out.push_str(&self.text[*start..end]);
                }
                Field::Id => {
                    out.push_str(ID_KEY);
                    out.push_str(id_json);
                }
                Field::Other { key, value } => {
                    out.push_str(key);
                    out.push(':');
                    out.push_str(&self.text[value.0..value.1]);
                }
            }
        }
        out.push('}');
        debug_assert_eq!(out.len(), len);
        out
    }

    /// The value of `id`, starting at `self.pos` (whitespace already passed): a string, or
    /// a number kept as its JSON text. Returns the id and its JSON text in the payload
    /// (always a string).
    fn id(&mut self) -> Result<(String, Cow<'a, str>), Fail> {
        let start = self.pos;
        if self.bytes.get(start) == Some(&b'"') {
            let s = self.string()?;
            return if s.escapes > 0 {
                let value = self
                    .text_of(s)
                    .map_err(|f| f.with_kind(PageErrorKind::Invalid))?
                    .into_owned();
                let json = json_string(&value);
                Ok((value, Cow::Owned(json)))
            } else {
                let value = self.text[s.start..s.end].to_owned();
                Ok((value, Cow::Borrowed(&self.text[start..self.pos])))
            };
        }
        self.skip_value()?;
        let text = &self.text[start..self.pos];
        match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => Ok((text.to_owned(), Cow::Owned(json_string(text)))),
            _ => Err(Fail::invalid(
                format!("id must be a string or a number, not {}", snippet(text)),
                start,
            )),
        }
    }

    /// `_nango_metadata`: an object of known fields, each a string (`deleted_at` and
    /// `pruned_at` may be null), read here; anything else is left to `serde_json`, so
    /// it fails (or not) as a `serde` reading of [`MetaDe`] would.
    fn metadata(&mut self) -> Result<Metadata, Fail> {
        const NAMES: [&str; 6] = [
            "first_seen_at",
            "last_modified_at",
            "last_action",
            "deleted_at",
            "pruned_at",
            "cursor",
        ];
        // The fields that may be null or absent.
        let optional = |slot: usize| slot == 3 || slot == 4;
        if self.peek() != Some(b'{') {
            return self.metadata_by_serde();
        }
        let start = self.pos;
        self.pos += 1;
        // Absent, null, or the string.
        let mut values: [Option<Option<Cow<'a, str>>>; 6] = Default::default();
        let mut first = true;
        while let Some((key_str, key)) = self.key(first)? {
            first = false;
            let Some(slot) = NAMES.iter().position(|n| *n == key) else {
                self.skip_value()?;
                continue;
            };
            if values[slot].is_some() {
                let message = format!("duplicate field `{}`", NAMES[slot]);
                return Err(Fail::invalid(message, key_str.start));
            }
            values[slot] = Some(match self.peek() {
                Some(b'"') => {
                    let s = self.string()?;
                    Some(self.text_of(s)?)
                }
                Some(b'n') if optional(slot) => {
                    self.literal(b"null")?;
                    None
                }
                _ => {
                    let expected = if optional(slot) {
                        "a string or null"
                    } else {
                        "a string"
                    };
                    return Err(self.wrong_type(expected));
                }
            });
        }
        let [
            first_seen_at,
            last_modified_at,
            last_action,
            deleted_at,
            pruned_at,
            cursor,
        ] = values;
        let end = self.pos;
        let required = |value: Option<Option<Cow<'a, str>>>, slot: usize| match value {
            Some(Some(text)) => Ok(text),
            _ => Err(Fail::invalid(
                format!("missing field `{}`", NAMES[slot]),
                end,
            )),
        };
        MetaDe {
            first_seen_at: required(first_seen_at, 0)?,
            last_modified_at: required(last_modified_at, 1)?,
            last_action: required(last_action, 2)?,
            deleted_at: deleted_at.flatten(),
            pruned_at: pruned_at.flatten(),
            cursor: required(cursor, 5)?,
        }
        .into_metadata()
        .map_err(|e| Fail::invalid(e, start))
    }

    /// `_nango_metadata` that is not an object, read by `serde_json` from where the
    /// value starts.
    fn metadata_by_serde(&mut self) -> Result<Metadata, Fail> {
        let start = self.pos;
        let rest = &self.text[start..];
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<MetaDe<'_>>();
        let meta = match values.next() {
            Some(Ok(meta)) => meta,
            Some(Err(e)) => return Err(Fail::json(&e, start + offset_in(rest, &e))),
            // Only whitespace was left.
            None => return Err(Fail::eof("a value", self.bytes.len())),
        };
        self.pos = start + values.byte_offset();
        meta.into_metadata().map_err(|e| Fail::invalid(e, start))
    }
}

/// The byte of `text` an error of `serde_json` reading it points at (it counts lines and
/// columns from 1).
fn offset_in(text: &str, e: &serde_json::Error) -> usize {
    let line_start = match e.line() {
        0 | 1 => 0,
        n => text
            .match_indices('\n')
            .nth(n - 2)
            .map_or(text.len(), |(i, _)| i + 1),
    };
    (line_start + e.column().saturating_sub(1)).min(text.len())
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    // Serializing a `str` cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}
