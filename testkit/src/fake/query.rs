//! `GET /records` query and header validation, shaped like Nango's zod schemas (zod 4
//! issue codes, messages and paths).

use serde_json::json;

use nango_sync::time::Timestamp;

/// One validation issue: `{code, message, path}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) path: Vec<String>,
}

impl Issue {
    fn new(code: &'static str, message: impl Into<String>, path: &[&str]) -> Self {
        Issue {
            code,
            message: message.into(),
            path: path.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({"code": self.code, "message": self.message, "path": self.path})
    }
}

/// A validated records query.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordsParams {
    pub(crate) model: String,
    pub(crate) variant: Option<String>,
    /// `modified_after` (or the legacy `delta`), truncated to milliseconds.
    pub(crate) modified_after: Option<Timestamp>,
    /// The limit as JavaScript's `Number()` coerced it (can have a fraction).
    pub(crate) limit: Option<f64>,
    /// The filter list joined by commas.
    pub(crate) filter: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) ids: Option<Vec<String>>,
}

/// Percent-decode one `application/x-www-form-urlencoded` component.
pub(crate) fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Split a raw query into decoded pairs, grouped by key in first-seen order.
pub(crate) fn parse_pairs(raw: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (k, v) = (url_decode(k), url_decode(v));
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some((_, vs)) => vs.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}

/// JavaScript's `Number(string)`.
pub(crate) fn js_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            return u64::from_str_radix(rest, radix)
                .map(|v| v as f64)
                .unwrap_or(f64::NAN);
        }
    }
    let b = t.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return f64::NAN;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return f64::NAN;
        }
    }
    if i != b.len() {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

fn matches_model(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_uppercase()) && s.len() >= 2 && c.all(word_char)
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// zod 4's `z.string().datetime()` (no offset, `Z` required, seconds and fraction
/// optional), parsed to milliseconds like JavaScript's `Date`.
pub(crate) fn parse_iso_z(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 17 || *b.last()? != b'Z' {
        return None;
    }
    let body = &s[..s.len() - 1];
    let (date_time, frac) = match body.split_once('.') {
        Some((dt, f)) => (dt, Some(f)),
        None => (body, None),
    };
    let with_secs = match date_time.len() {
        16 => format!("{date_time}:00"),
        19 => date_time.to_string(),
        _ => return None,
    };
    if frac.is_some() && date_time.len() != 19 {
        return None;
    }
    let wb = with_secs.as_bytes();
    let shape_ok = wb.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        10 => *c == b'T',
        13 | 16 => *c == b':',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let frac = match frac {
        Some(f) if f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()) => return None,
        Some(f) => format!(".{}", &f[..f.len().min(3)]),
        None => String::new(),
    };
    Timestamp::parse(&format!("{with_secs}{frac}Z")).ok()
}

/// Validate the query pairs like Nango's `validationQuery` (a strict zod object).
pub(crate) fn validate_records_query(
    pairs: &[(String, Vec<String>)],
    now: Timestamp,
) -> Result<RecordsParams, Vec<Issue>> {
    const KNOWN: [&str; 8] = [
        "model",
        "variant",
        "delta",
        "modified_after",
        "limit",
        "filter",
        "cursor",
        "ids",
    ];
    let mut issues = Vec::new();
    let mut p = RecordsParams::default();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_slice())
    };
    // A single string, or an issue (a repeated key arrives as an array).
    let single = |k: &str, issues: &mut Vec<Issue>, required: bool| -> Option<String> {
        match get(k) {
            None if required => {
                issues.push(Issue::new(
                    "invalid_type",
                    "Invalid input: expected string, received undefined",
                    &[k],
                ));
                None
            }
            None => None,
            Some([v]) => Some(v.clone()),
            Some(_) => {
                let expected = if k == "limit" { "number" } else { "string" };
                let received = if k == "limit" { "NaN" } else { "array" };
                issues.push(Issue::new(
                    "invalid_type",
                    format!("Invalid input: expected {expected}, received {received}"),
                    &[k],
                ));
                None
            }
        }
    };
    let max255 = |k: &str, v: &str, issues: &mut Vec<Issue>| {
        if v.chars().count() > 255 {
            issues.push(Issue::new(
                "too_big",
                "Too big: expected string to have <=255 characters",
                &[k],
            ));
        }
    };

    if let Some(m) = single("model", &mut issues, true) {
        if !matches_model(&m) {
            issues.push(Issue::new(
                "invalid_format",
                "Invalid string: must match pattern /^[A-Z][a-zA-Z0-9_-]+$/",
                &["model"],
            ));
        }
        max255("model", &m, &mut issues);
        p.model = m;
    }
    if let Some(v) = single("variant", &mut issues, false) {
        if v.is_empty() || !v.chars().all(word_char) {
            issues.push(Issue::new(
                "invalid_format",
                "Invalid string: must match pattern /^[a-zA-Z0-9_-]+$/",
                &["variant"],
            ));
        }
        max255("variant", &v, &mut issues);
        p.variant = Some(v);
    }
    let lookback = now
        .add_micros(-365 * 24 * 3600 * 1_000_000)
        .truncate_millis();
    for k in ["delta", "modified_after"] {
        if let Some(v) = single(k, &mut issues, false) {
            match parse_iso_z(&v) {
                None => issues.push(Issue::new("invalid_format", "Invalid ISO datetime", &[k])),
                Some(t) if t < lookback => issues.push(Issue::new(
                    "custom",
                    "must be within the last 12 months",
                    &[k],
                )),
                Some(t) => {
                    if k == "delta" || p.modified_after.is_none() {
                        p.modified_after = Some(t);
                    }
                }
            }
        }
    }
    if let Some(v) = single("limit", &mut issues, false) {
        let n = js_number(&v);
        if n.is_nan() {
            issues.push(Issue::new(
                "invalid_type",
                "Invalid input: expected number, received NaN",
                &["limit"],
            ));
        } else if n.is_infinite() {
            issues.push(Issue::new(
                "invalid_type",
                "Invalid input: expected number, received Infinity",
                &["limit"],
            ));
        } else {
            if n < 1.0 {
                issues.push(Issue::new(
                    "too_small",
                    "Too small: expected number to be >=1",
                    &["limit"],
                ));
            }
            if n > 10_000.0 {
                issues.push(Issue::new(
                    "too_big",
                    "Too big: expected number to be <=10000",
                    &["limit"],
                ));
            }
            p.limit = Some(n);
        }
    }
    if let Some(v) = single("filter", &mut issues, false) {
        let mut ok = true;
        for (i, part) in v.split(',').enumerate() {
            if !matches!(
                part,
                "added" | "updated" | "deleted" | "ADDED" | "UPDATED" | "DELETED"
            ) {
                ok = false;
                let idx = i.to_string();
                issues.push(Issue::new(
                    "invalid_value",
                    r#"Invalid option: expected one of "added"|"updated"|"deleted"|"ADDED"|"UPDATED"|"DELETED""#,
                    &["filter", &idx],
                ));
            }
        }
        if ok {
            p.filter = Some(v);
        }
    }
    if let Some(c) = single("cursor", &mut issues, false) {
        let n = c.chars().count();
        if n < 1 {
            issues.push(Issue::new(
                "too_small",
                "Too small: expected string to have >=1 characters",
                &["cursor"],
            ));
        } else if n > 1000 {
            issues.push(Issue::new(
                "too_big",
                "Too big: expected string to have <=1000 characters",
                &["cursor"],
            ));
        } else {
            p.cursor = Some(c);
        }
    }
    if let Some(ids) = get("ids") {
        let ok = ids.iter().all(|i| (1..=256).contains(&i.chars().count())) && ids.len() <= 100;
        if ok {
            p.ids = Some(ids.to_vec());
        } else {
            issues.push(Issue::new("invalid_union", "Invalid input", &["ids"]));
        }
    }
    let unknown: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        let quoted: Vec<String> = unknown.iter().map(|k| format!("\"{k}\"")).collect();
        let message = if unknown.len() == 1 {
            format!("Unrecognized key: {}", quoted[0])
        } else {
            format!("Unrecognized keys: {}", quoted.join(", "))
        };
        issues.push(Issue {
            code: "unrecognized_keys",
            message,
            path: Vec::new(),
        });
    }
    if issues.is_empty() {
        Ok(p)
    } else {
        Err(issues)
    }
}

/// Validate `Connection-Id` and `Provider-Config-Key` like Nango's `validationHeaders`.
pub(crate) fn validate_headers(
    connection: Option<&str>,
    integration: Option<&str>,
) -> Result<(String, String), Vec<Issue>> {
    let mut issues = Vec::new();
    let conn_char = |c: char| c.is_ascii_alphanumeric() || ",.;:=+~[]|@${}\"'\\/_ -".contains(c);
    let key_char = |c: char| c.is_ascii_alphanumeric() || "~:.@ _-".contains(c);
    let mut check = |name: &str, v: Option<&str>, ok: &dyn Fn(char) -> bool, pattern: &str| match v
    {
        None => issues.push(Issue::new(
            "invalid_type",
            "Invalid input: expected string, received undefined",
            &[name],
        )),
        Some(v) => {
            if v.is_empty() || !v.chars().all(ok) {
                issues.push(Issue::new(
                    "invalid_format",
                    format!("Invalid string: must match pattern {pattern}"),
                    &[name],
                ));
            }
            if v.chars().count() > 255 {
                issues.push(Issue::new(
                    "too_big",
                    "Too big: expected string to have <=255 characters",
                    &[name],
                ));
            }
        }
    };
    check(
        "connection-id",
        connection,
        &conn_char,
        r#"/^[a-zA-Z0-9,.;:=+~[\]|@${}"'\\/_ -]+$/"#,
    );
    check(
        "provider-config-key",
        integration,
        &key_char,
        "/^[a-zA-Z0-9~:.@ _-]+$/",
    );
    if issues.is_empty() {
        Ok((
            connection.unwrap_or_default().to_string(),
            integration.unwrap_or_default().to_string(),
        ))
    } else {
        Err(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(q: &str) -> Result<RecordsParams, Vec<Issue>> {
        validate_records_query(
            &parse_pairs(q),
            Timestamp::parse("2026-11-26T20:00:00Z").unwrap(),
        )
    }

    fn codes(q: &str) -> Vec<(&'static str, Vec<String>)> {
        v(q).unwrap_err()
            .into_iter()
            .map(|i| (i.code, i.path))
            .collect()
    }

    #[test]
    fn accepts_what_nango_accepts() {
        let p =
            v("model=Ticket&limit=1.5&cursor=abc&ids=a&ids=b&filter=updated%2Cdeleted&variant=eu")
                .unwrap();
        assert_eq!(p.limit, Some(1.5));
        assert_eq!(p.ids, Some(vec!["a".into(), "b".into()]));
        assert_eq!(p.filter.as_deref(), Some("updated,deleted"));
        let p = v("model=Ticket&modified_after=2026-11-26T19%3A47%3A22.998777Z").unwrap();
        assert_eq!(
            p.modified_after,
            Timestamp::parse("2026-11-26T19:47:22.998Z").ok()
        );
        assert!(v("model=Contact").is_ok());
        assert!(v("model=Ticket&modified_after=2026-11-26T19:47Z").is_ok());
    }

    #[test]
    fn rejects_like_zod() {
        assert_eq!(
            codes("model=Ticket&modifiedAfter=x"),
            vec![("unrecognized_keys", vec![])]
        );
        assert_eq!(
            codes("model=Ticket&limit=0"),
            vec![("too_small", vec!["limit".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&limit=10001"),
            vec![("too_big", vec!["limit".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&limit=abc"),
            vec![("invalid_type", vec!["limit".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&modified_after=2026-11-26T19%3A47%3A22.997%2B00%3A00"),
            vec![("invalid_format", vec!["modified_after".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&modified_after=2020-01-01T00:00:00.000Z"),
            vec![("custom", vec!["modified_after".to_string()])]
        );
        assert_eq!(
            codes("limit=5"),
            vec![("invalid_type", vec!["model".to_string()])]
        );
        assert_eq!(
            codes("model="),
            vec![("invalid_format", vec!["model".to_string()])]
        );
        assert_eq!(
            codes("model=ticket"),
            vec![("invalid_format", vec!["model".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&filter=all"),
            vec![("invalid_value", vec!["filter".to_string(), "0".to_string()])]
        );
        assert_eq!(
            codes("model=Ticket&cursor="),
            vec![("too_small", vec!["cursor".to_string()])]
        );
        let many: String = (0..101).map(|i| format!("&ids=x{i}")).collect();
        assert_eq!(
            codes(&format!("model=Ticket{many}")),
            vec![("invalid_union", vec!["ids".to_string()])]
        );
        let err = v("model=Ticket&a=1&b=2").unwrap_err();
        assert_eq!(err[0].message, r#"Unrecognized keys: "a", "b""#);
    }

    #[test]
    fn js_number_is_javascript_number() {
        for (s, n) in [
            ("1.5", 1.5),
            ("", 0.0),
            (" 7 ", 7.0),
            ("1e3", 1000.0),
            ("0x10", 16.0),
            (".5", 0.5),
            ("5.", 5.0),
        ] {
            assert_eq!(js_number(s), n, "{s}");
        }
        for s in ["abc", "1,5", "inf", "1e", "--1", "."] {
            assert!(js_number(s).is_nan(), "{s}");
        }
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%3Db+c%2"), "a=b c%2");
        assert_eq!(url_decode("%E2%98%95"), "☕");
    }
}
