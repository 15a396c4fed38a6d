//! Deterministic, realistic record payloads for `generate`: 18 fields, nested
//! objects, arrays and non-ASCII text, 700 to 800 bytes each.

pub(crate) use crate::rng::SplitMix64;

/// FNV-1a, to mix a stream key into the seed.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

const FIRST: &[&str] = &[
    "Zoë",
    "Jürgen",
    "Åsa",
    "Łukasz",
    "Ana",
    "Fiona",
    "Νίκος",
    "Иван",
    "山田",
    "José",
    "Søren",
    "Chloé",
    "Ahmet",
    "Priya",
    "Olúwáṣeun",
    "Mika",
];
const LAST: &[&str] = &[
    "Ångström",
    "Weiß",
    "Øberg",
    "Żółw",
    "Núñez",
    "Ní Bhriain",
    "Παπαδόπουλος",
    "Петров",
    "太郎",
    "García",
    "Kierkegaard",
    "Dubois",
    "Yılmaz",
    "Sharma",
    "Adébáyọ̀",
    "Virtanen",
];
const WORDS: &[&str] = &[
    "café",
    "menu",
    "typo",
    "crème",
    "brûlée",
    "naïve",
    "résumé",
    "parser",
    "straße",
    "launch",
    "🚀",
    "日本語",
    "ticket",
    "Ελληνικά",
    "Кириллица",
    "quotes",
    "\"double\"",
    "'single'",
    "billing",
    "export",
    "sync",
    "webhook",
    "timeout",
    "retry",
    "cursor",
    "page",
    "α",
    "β",
    "☕",
    "emoji 🎉",
    "backslash \\",
    "tab\tchar",
    "über",
    "façade",
    "smørrebrød",
    "piñata",
];
const STATUS: &[&str] = &["open", "in_progress", "blocked", "review", "done", "closed"];
const TAGS: &[&str] = &[
    "ops", "kitchen", "fr", "jp", "es", "pl", "ie", "gr", "ru", "misc", "urgent", "backend",
    "frontend", "billing",
];
const TEAMS: &[&str] = &[
    "Platform", "Growth", "Données", "Infra", "Support", "Mobile",
];
const LOCALES: &[&str] = &[
    "en-US", "fr-FR", "de-DE", "ja-JP", "es-ES", "pl-PL", "el-GR", "ru-RU",
];

/// A list of texts with their JSON string escapes applied (computed once), so writing
/// a picked text is one copy.
struct Escaped {
    /// The escaped text, without quotes.
    inner: Vec<Box<str>>,
    /// The length of the text before escaping.
    raw_len: Vec<usize>,
}

impl Escaped {
    fn new(items: &[&str]) -> Self {
        Escaped {
            inner: items
                .iter()
                .map(|s| {
                    let lit = super::json::str_lit(s);
                    lit[1..lit.len() - 1].into()
                })
                .collect(),
            raw_len: items.iter().map(|s| s.len()).collect(),
        }
    }

    /// Pick one item (one draw of `below(len)`) and append it escaped,
    /// without quotes; returns its length before escaping.
    fn push_pick(&self, r: &mut SplitMix64, out: &mut String) -> usize {
        let i = r.below(self.inner.len() as u64) as usize;
        out.push_str(&self.inner[i]);
        self.raw_len[i]
    }

    /// Pick one item and append it as a JSON string literal.
    fn push_pick_lit(&self, r: &mut SplitMix64, out: &mut String) {
        out.push('"');
        self.push_pick(r, out);
        out.push('"');
    }
}

struct Lists {
    first: Escaped,
    last: Escaped,
    words: Escaped,
    status: Escaped,
    tags: Escaped,
    teams: Escaped,
    locales: Escaped,
}

fn lists() -> &'static Lists {
    static LISTS: std::sync::OnceLock<Lists> = std::sync::OnceLock::new();
    LISTS.get_or_init(|| Lists {
        first: Escaped::new(FIRST),
        last: Escaped::new(LAST),
        words: Escaped::new(WORDS),
        status: Escaped::new(STATUS),
        tags: Escaped::new(TAGS),
        teams: Escaped::new(TEAMS),
        locales: Escaped::new(LOCALES),
    })
}

/// Append the decimal digits of `v`, at least `width` of them (zero-padded).
pub(crate) fn push_uint_padded(out: &mut String, mut v: u64, width: usize) {
    let mut b = [b'0'; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(b.len() - width.min(b.len()));
    out.extend(b[start..].iter().map(|&d| char::from(d)));
}

/// Append the decimal digits of `v`.
pub(crate) fn push_uint(out: &mut String, v: u64) {
    push_uint_padded(out, v, 1);
}

/// Append `v` as 16 lowercase hexadecimal digits.
fn push_hex16(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    for (i, c) in b.iter_mut().enumerate() {
        *c = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out.extend(b.iter().map(|&d| char::from(d)));
}

/// Append `n` words picked from [`WORDS`], separated by spaces, escaped (no quotes);
/// returns their length before escaping.
fn push_words(r: &mut SplitMix64, n: u64, out: &mut String) -> usize {
    let words = &lists().words;
    let mut len = 0;
    for i in 0..n {
        if i > 0 {
            out.push(' ');
            len += 1;
        }
        len += words.push_pick(r, out);
    }
    len
}

/// Append a date in 2025-2026, seconds precision, ending in `Z` (no quotes).
fn push_iso(r: &mut SplitMix64, base_days: u64, out: &mut String) {
    let secs = 1_735_689_600 + (base_days % 690) * 86_400 + r.below(86_400);
    nango_sync::time::Timestamp::from_micros(secs as i64 * 1_000_000).write_utc_z(out);
}

fn person(r: &mut SplitMix64, out: &mut String) {
    let l = lists();
    let first = r.below(l.first.inner.len() as u64) as usize;
    let last = r.below(l.last.inner.len() as u64) as usize;
    out.push_str("{\"id\":");
    push_uint(out, 1000 + r.below(90_000));
    out.push_str(",\"name\":\"");
    out.push_str(&l.first.inner[first]);
    out.push(' ');
    out.push_str(&l.last.inner[last]);
    out.push_str("\",\"email\":\"user");
    push_uint(out, r.below(100_000));
    out.push_str("@example.com\",\"tags\":[");
    let n = r.below(4);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        l.tags.push_pick_lit(r, out);
    }
    out.push_str("]}");
}

/// How the ids of generated records are formed.
///
/// Most APIs behind Nango name records either by a number that grows as they are created
/// or by a random identifier (a UUID). A store indexes records by id, so the two orders
/// cost a store differently: an id that follows the previous one lands at the end of the
/// index, a random one anywhere in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdOrder {
    /// `rec-0000001`, `rec-0000002`, ...: ids in the order records are generated.
    #[default]
    Sequential,
    /// UUID-shaped ids (`5d1e08c2-3a9f-4b71-9c0e-7f24a1d6e3b8`), each a fixed
    /// permutation of the record's number: no relation between id order and the order
    /// records are generated.
    Scattered,
}

impl IdOrder {
    /// The name used by the control API and the command line (`sequential`,
    /// `scattered`).
    pub fn name(self) -> &'static str {
        match self {
            IdOrder::Sequential => "sequential",
            IdOrder::Scattered => "scattered",
        }
    }
}

impl std::str::FromStr for IdOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sequential" => Ok(IdOrder::Sequential),
            "scattered" => Ok(IdOrder::Scattered),
            other => Err(format!(
                "unknown id order {other:?} (expected \"sequential\" or \"scattered\")"
            )),
        }
    }
}

/// The id of the `n`th generated record (`rec-0000001` when sequential).
pub(crate) fn generated_id(n: u64, order: IdOrder) -> String {
    let mut s = String::with_capacity(36);
    push_generated_id(&mut s, n, order);
    s
}

/// Append [`generated_id`] of `n`.
pub(crate) fn push_generated_id(out: &mut String, n: u64, order: IdOrder) {
    match order {
        IdOrder::Sequential => {
            out.push_str("rec-");
            push_uint_padded(out, n, 7);
        }
        IdOrder::Scattered => push_scattered_id(out, n as u32),
    }
}

/// The number and order of the generated id `id`, when it is exactly one (record
/// numbers fit in a `u32`).
pub(crate) fn parse_generated_id(id: &str) -> Option<(u32, IdOrder)> {
    if id.len() == 36 {
        return parse_scattered_id(id).map(|n| (n, IdOrder::Scattered));
    }
    let digits = id.strip_prefix("rec-")?;
    let b = digits.as_bytes();
    if b.len() < 7 || (b.len() > 7 && b[0] == b'0') || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.parse().ok().map(|n| (n, IdOrder::Sequential))
}

/// The multiplicative inverse of the odd `a` modulo 2^32 (Newton's iteration: each step
/// doubles the number of correct low bits, from 3).
const fn inverse_mod_2_32(a: u32) -> u32 {
    let mut x = a;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u32.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

const SCATTER_M1: u32 = 0x9E37_79B1;
const SCATTER_M2: u32 = 0x85EB_CA77;

/// A bijection of `u32` that spreads consecutive numbers all over the range: xor-shifts
/// and odd multiplications, each invertible.
fn scatter(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(SCATTER_M1);
    x ^= x >> 15;
    x = x.wrapping_mul(SCATTER_M2);
    x ^ (x >> 16)
}

/// The inverse of [`scatter`].
fn unscatter(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(const { inverse_mod_2_32(SCATTER_M2) });
    x ^= (x >> 15) ^ (x >> 30);
    x = x.wrapping_mul(const { inverse_mod_2_32(SCATTER_M1) });
    x ^ (x >> 16)
}

/// Append the scattered id of `n`: its first 8 hex digits are `scatter(n)`, the other
/// 24 follow from them, in the shape of a version 4 UUID.
fn push_scattered_id(out: &mut String, n: u32) {
    let head = scatter(n);
    let mut r = SplitMix64::new(u64::from(head) ^ 0x1D5C_A77E_4ED0_1D00);
    let (b, c) = (r.next_u64(), r.next_u64());
    push_hex(out, u64::from(head), 8);
    out.push('-');
    push_hex(out, b >> 48, 4);
    out.push_str("-4");
    push_hex(out, (b >> 36) & 0xfff, 3);
    out.push('-');
    push_hex(out, 8 | ((b >> 34) & 0x3), 1);
    push_hex(out, (b >> 22) & 0xfff, 3);
    out.push('-');
    push_hex(out, c >> 16, 12);
}

/// Append the low `digits` hex digits of `v`, lower case.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        let d = ((v >> (4 * i)) & 0xf) as u8;
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

/// The number whose scattered id is exactly `id`.
fn parse_scattered_id(id: &str) -> Option<u32> {
    let head = u32::from_str_radix(id.get(..8)?, 16).ok()?;
    let n = unscatter(head);
    let mut again = String::with_capacity(36);
    push_scattered_id(&mut again, n);
    (again == id).then_some(n)
}

/// The mix of a seed, a stream and a revision that, with a record number, determines a
/// generated payload. Revision 0 is the first version of every record; each later
/// revision changes every payload (same ids).
pub(crate) fn generated_mix(seed: u64, stream_salt: u64, revision: u64) -> u64 {
    seed ^ stream_salt.rotate_left(17) ^ revision.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// The payload of generated record number `n` of a stream, as compact JSON text.
#[cfg(test)]
pub(crate) fn generated_record(seed: u64, stream_salt: u64, n: u64) -> String {
    let mut out = String::with_capacity(900);
    let kind = GenKind {
        mix: generated_mix(seed, stream_salt, 0),
        bytes: DEFAULT_RECORD_BYTES,
        ids: IdOrder::Sequential,
    };
    write_generated(kind, n, &mut out);
    out
}

/// The default size of a generated record, in bytes (records land within 90 bytes above).
pub(crate) const DEFAULT_RECORD_BYTES: u32 = 700;

/// What determines a generated payload besides the record's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GenKind {
    /// The seed, stream and revision mix ([`generated_mix`]).
    pub(crate) mix: u64,
    /// The target size in bytes.
    pub(crate) bytes: u32,
    /// How the record's id (also its payload's `id`) is formed.
    pub(crate) ids: IdOrder,
}

/// Append the payload of generated record number `n` of `kind` to `out`: compact JSON
/// text of `kind.bytes` to `kind.bytes + 90` bytes (at least about 450, whatever is
/// asked).
pub(crate) fn write_generated(kind: GenKind, n: u64, out: &mut String) {
    let mut r = SplitMix64::new(kind.mix ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let base = out.len();
    write_body(&mut r, n, kind.ids, kind.bytes as usize, out, base);
}

fn write_body(
    r: &mut SplitMix64,
    n: u64,
    order: IdOrder,
    bytes: usize,
    out: &mut String,
    base: usize,
) {
    let l = lists();
    out.push_str("{\"id\":\"");
    push_generated_id(out, n, order);
    out.push_str("\",\"number\":");
    push_uint(out, n);
    out.push_str(",\"title\":\"");
    let title_words = 3 + r.below(4);
    push_words(r, title_words, out);
    out.push_str("\",\"status\":");
    l.status.push_pick_lit(r, out);
    out.push_str(",\"priority\":");
    push_uint(out, 1 + r.below(5));
    let day = r.below(690);
    out.push_str(",\"created_at\":\"");
    push_iso(r, day, out);
    out.push_str("\",\"updated_at\":\"");
    push_iso(r, day + 3, out);
    out.push_str("\",\"assignee\":");
    person(r, out);
    out.push_str(",\"reporter\":");
    person(r, out);
    out.push_str(",\"labels\":[");
    for i in 0..(1 + r.below(4)) {
        if i > 0 {
            out.push(',');
        }
        l.tags.push_pick_lit(r, out);
    }
    out.push_str("],\"description\":");
    // Pad the description so the record lands in 700-800 bytes (counting its text
    // before escaping).
    let before = out.len() - base;
    out.push('"');
    let mut desc_len = push_words(r, 4, out);
    let target = bytes + r.below(90) as usize;
    while before + desc_len + 390 < target {
        out.push(' ');
        desc_len += 1 + l.words.push_pick(r, out);
    }
    out.push_str("\",\"estimate_hours\":");
    push_uint(out, r.below(40));
    out.push('.');
    push_uint(out, r.below(10));
    out.push_str(",\"is_public\":");
    out.push_str(if r.below(2) == 0 { "false" } else { "true" });
    out.push_str(",\"watchers\":[");
    for i in 0..r.below(5) {
        if i > 0 {
            out.push(',');
        }
        push_uint(out, 10_000 + r.below(90_000));
    }
    out.push_str("],\"custom_fields\":{\"team\":");
    l.teams.push_pick_lit(r, out);
    out.push_str(",\"sprint\":");
    push_uint(out, 1 + r.below(60));
    out.push_str(",\"score\":");
    push_uint(out, r.below(100));
    out.push('.');
    push_uint_padded(out, r.below(100), 2);
    out.push_str(",\"external_ref\":null,\"nested\":{\"depth\":2,\"flags\":[true,false]}}");
    out.push_str(",\"url\":\"https://tracker.example.com/t/");
    push_uint(out, n);
    out.push_str("\",\"locale\":");
    l.locales.push_pick_lit(r, out);
    out.push_str(",\"checksum\":\"");
    push_hex16(out, r.next_u64());
    out.push_str("\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_are_realistic_and_deterministic() {
        let mut sizes = Vec::new();
        for n in 1..=500 {
            let a = generated_record(42, 7, n);
            assert_eq!(a, generated_record(42, 7, n));
            assert_ne!(a, generated_record(43, 7, n));
            let v: serde_json::Value = serde_json::from_str(&a).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 18, "{a}");
            assert_eq!(
                obj["id"],
                serde_json::Value::String(generated_id(n, IdOrder::Sequential))
            );
            sizes.push(a.len());
        }
        let avg = sizes.iter().sum::<usize>() / sizes.len();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(
            (700..=800).contains(&avg),
            "average size {avg} ({min}..{max})"
        );
    }

    #[test]
    fn generated_ids_parse_back_exactly() {
        let seq = IdOrder::Sequential;
        for n in [
            0,
            1,
            42,
            999_999,
            9_999_999,
            10_000_000,
            123_456_789,
            u64::from(u32::MAX),
        ] {
            for order in [IdOrder::Sequential, IdOrder::Scattered] {
                assert_eq!(
                    parse_generated_id(&generated_id(n, order)),
                    Some((n as u32, order)),
                    "{n} {order:?}"
                );
            }
        }
        assert_eq!(generated_id(5, seq), "rec-0000005");
        assert_eq!(generated_id(12_345_678, seq), "rec-12345678");
        let scattered = generated_id(1, IdOrder::Scattered);
        for other in [
            "rec-12",
            "rec-000001",
            "rec-00000012",
            "rec-0000001a",
            "rec-+000001",
            "rec-4294967296",
            "Rec-0000001",
            "rec-0000001 ",
            "",
            "00000000-0000-4000-8000-000000000000",
            &scattered.to_uppercase(),
            &format!("{}0", &scattered[..35]),
        ] {
            assert_eq!(parse_generated_id(other), None, "{other}");
        }
    }

    #[test]
    fn scattered_ids_are_distinct_uuid_shaped_and_out_of_order() {
        assert_eq!(unscatter(scatter(0)), 0);
        let mut seen = std::collections::HashSet::new();
        let mut ascending = 0;
        let mut previous = String::new();
        for n in 1..=20_000u64 {
            let id = generated_id(n, IdOrder::Scattered);
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(parsed.hyphenated().to_string(), id, "lower-case hyphenated");
            assert!(seen.insert(id.clone()), "{n} repeats {id}");
            if id > previous {
                ascending += 1;
            }
            previous = id;
        }
        // Consecutive numbers land anywhere: about half the ids sort after the one before.
        assert!(
            (9_000..11_000).contains(&ascending),
            "{ascending} of 20000 ids sort after their predecessor"
        );
        for x in [1u32, 2, 0x8000_0000, u32::MAX, 0x1234_5678] {
            assert_eq!(unscatter(scatter(x)), x, "{x}");
        }
    }
}
