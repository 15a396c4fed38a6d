//! Deterministic, realistic record payloads for `generate`: 18 fields, nested
//! objects, arrays and non-ASCII text, 700 to 800 bytes each.

use super::json::push_str_lit;

/// splitmix64: a tiny, good-enough seeded generator (no `rand` dependency).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

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

fn words(r: &mut SplitMix64, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(r.pick(WORDS));
    }
    s
}

fn iso(r: &mut SplitMix64, base_days: u64) -> String {
    // A date in 2025-2026, seconds precision.
    let secs = 1_735_689_600 + (base_days % 690) * 86_400 + r.below(86_400);
    crate::time::Timestamp::from_micros(secs as i64 * 1_000_000).to_utc_z()
}

fn person(r: &mut SplitMix64, out: &mut String) {
    let first = r.pick(FIRST);
    let last = r.pick(LAST);
    out.push_str("{\"id\":");
    out.push_str(&(1000 + r.below(90_000)).to_string());
    out.push_str(",\"name\":");
    push_str_lit(out, &format!("{first} {last}"));
    out.push_str(",\"email\":");
    push_str_lit(out, &format!("user{}@example.com", r.below(100_000)));
    out.push_str(",\"tags\":[");
    let n = r.below(4);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        push_str_lit(out, r.pick(TAGS));
    }
    out.push_str("]}");
}

/// The id of the `n`th generated record: `rec-0000001`.
pub(crate) fn generated_id(n: u64) -> String {
    format!("rec-{n:07}")
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
    write_generated(
        generated_mix(seed, stream_salt, 0),
        n,
        DEFAULT_RECORD_BYTES,
        &mut out,
    );
    out
}

/// The default size of a generated record, in bytes (records land within 90 bytes above).
pub(crate) const DEFAULT_RECORD_BYTES: u32 = 700;

/// Append the payload of generated record number `n` (for `mix`, see [`generated_mix`])
/// to `out`: compact JSON text of `bytes` to `bytes + 90` bytes (at least about 450,
/// whatever `bytes` asks).
pub(crate) fn write_generated(mix: u64, n: u64, bytes: u32, out: &mut String) {
    let mut r = SplitMix64::new(mix ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let base = out.len();
    write_body(&mut r, n, bytes as usize, out, base);
}

fn write_body(r: &mut SplitMix64, n: u64, bytes: usize, out: &mut String, base: usize) {
    let r = &mut *r;
    out.push_str("{\"id\":");
    push_str_lit(out, &generated_id(n));
    out.push_str(",\"number\":");
    out.push_str(&n.to_string());
    out.push_str(",\"title\":");
    let title_words = 3 + r.below(4) as usize;
    push_str_lit(out, &words(r, title_words));
    out.push_str(",\"status\":");
    push_str_lit(out, r.pick(STATUS));
    out.push_str(",\"priority\":");
    out.push_str(&(1 + r.below(5)).to_string());
    let day = r.below(690);
    out.push_str(",\"created_at\":");
    push_str_lit(out, &iso(r, day));
    out.push_str(",\"updated_at\":");
    push_str_lit(out, &iso(r, day + 3));
    out.push_str(",\"assignee\":");
    person(r, out);
    out.push_str(",\"reporter\":");
    person(r, out);
    out.push_str(",\"labels\":[");
    for i in 0..(1 + r.below(4)) {
        if i > 0 {
            out.push(',');
        }
        push_str_lit(out, r.pick(TAGS));
    }
    out.push_str("],\"description\":");
    // Pad the description so the record lands in 700-800 bytes.
    let mut desc = words(r, 4);
    let target = bytes + r.below(90) as usize;
    while out.len() - base + desc.len() + 390 < target {
        desc.push(' ');
        desc.push_str(r.pick(WORDS));
    }
    push_str_lit(out, &desc);
    out.push_str(",\"estimate_hours\":");
    out.push_str(&format!("{}.{}", r.below(40), r.below(10)));
    out.push_str(",\"is_public\":");
    out.push_str(if r.below(2) == 0 { "false" } else { "true" });
    out.push_str(",\"watchers\":[");
    for i in 0..r.below(5) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&(10_000 + r.below(90_000)).to_string());
    }
    out.push_str("],\"custom_fields\":{\"team\":");
    push_str_lit(out, r.pick(TEAMS));
    out.push_str(",\"sprint\":");
    out.push_str(&(1 + r.below(60)).to_string());
    out.push_str(",\"score\":");
    out.push_str(&format!("{}.{:02}", r.below(100), r.below(100)));
    out.push_str(",\"external_ref\":null,\"nested\":{\"depth\":2,\"flags\":[true,false]}}");
    out.push_str(",\"url\":");
    push_str_lit(out, &format!("https://tracker.example.com/t/{n}"));
    out.push_str(",\"locale\":");
    push_str_lit(out, r.pick(LOCALES));
    out.push_str(",\"checksum\":");
    push_str_lit(out, &format!("{:016x}", r.next_u64()));
    out.push('}');
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
            assert_eq!(obj["id"], serde_json::Value::String(generated_id(n)));
            sizes.push(a.len());
        }
        let avg = sizes.iter().sum::<usize>() / sizes.len();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(
            (700..=800).contains(&avg),
            "average size {avg} ({min}..{max})"
        );
    }
}
