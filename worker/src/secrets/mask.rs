//! Credential masking: the one place that removes credential values, raw
//! and encoded, from anything the worker sends or writes.
//!
//! A [`Masker`] is built from secret values. For each it precomputes, once,
//! the forms a credential commonly takes when an internal API (or an error
//! message, or a log field) hands it back:
//! - raw;
//! - standard base64 and base64url, each in its three alignments: the
//!   characters that only the secret's bits determine when it starts at
//!   offset 0, 1 or 2 of a 3-byte group inside a longer encoded string (the
//!   stable middle part of each; the first and last characters, which mix
//!   in neighbouring bytes, are not part of the pattern);
//! - URL-encoded (percent-encoding of the reserved characters, of every
//!   byte, and the form encoding with `+` for a space; upper- and
//!   lower-case hex each);
//! - hex, lower and upper case;
//! - JSON-escaped, as the value appears inside a JSON string: `\"`, `\\`,
//!   control characters, optionally `\/`, and `\uXXXX` (lower or upper
//!   hex) for non-ASCII and HTML-sensitive characters, as common encoders
//!   write it; and as Rust's `Debug` escapes it in a log field.
//!
//! Every occurrence of any of these is replaced by [`REDACTED`] (overlapping
//! occurrences become one marker). Encoded forms shorter
//! than [`MIN_VARIANT_LEN`] bytes are skipped, so a short credential's base64
//! fragment does not mask unrelated text; the raw form is always masked.
//!
//! The worker keeps one process-wide set of every value it loaded
//! ([`remember`], called by [`super::Secrets::load`] and
//! [`super::load_local_now`]; at start every `env://` and `file://`
//! credential the config names is read once for this, so it is known before
//! its first task); [`current`] is the masker for all of them. A Key Vault
//! value is known from its first fetch on.
//! Task outputs and error messages ([`crate::task`]), and so the audit
//! records made of them, go through it, as does every log line
//! ([`MaskingMakeWriter`]).
//!
//! What it does not do: it cannot recognise a credential the internal API
//! split across fields or strings, transformed in any other way (another
//! encoding, encryption, a hash, a mix of escaped and unescaped
//! characters beyond the forms above, a prefix of it), or one shorter than
//! the minimum in an encoded form. It is defense in depth: the design
//! never sends a credential to the orchestrator in the first place (it
//! stays on the worker and goes only to the internal API a task's config
//! names). It masks values, never names or references. Its copies of the
//! values live in the matcher's memory for the life of the process and are
//! not wiped.

use std::borrow::Cow;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use zeroize::Zeroizing;

use super::SecretValue;

/// The marker that replaces a credential, in any of its forms.
pub const REDACTED: &str = "[REDACTED]";

/// Shortest encoded form that is masked, in bytes. A shorter base64, hex,
/// URL or JSON form (from a short credential, or the middle of a short
/// credential's base64) is skipped: six characters occur by chance too
/// often to be masked everywhere. The raw value is masked at any length.
pub const MIN_VARIANT_LEN: usize = 6;

/// Most distinct values [`remember`] keeps; past it the oldest is dropped
/// (a worker that rotated through this many values of one credential).
pub const MAX_REMEMBERED: usize = 256;

/// Replaces every known form of a set of credentials with [`REDACTED`].
/// Build once, use many times; cheap to share behind an [`Arc`].
#[derive(Clone, Default)]
pub struct Masker {
    automaton: Option<AhoCorasick>,
    patterns: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker for `secrets` (empty values are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<Zeroizing<String>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for secret in secrets {
            for variant in variants(secret) {
                if seen.insert(pattern_digest(&variant)) {
                    patterns.push(variant);
                }
            }
        }
        if patterns.is_empty() {
            return Masker::default();
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(patterns.iter().map(|p| p.as_bytes()))
            .ok();
        Masker {
            automaton,
            patterns,
        }
    }

    /// A masker for loaded values.
    pub fn for_values<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Masker {
        Masker::new(values.into_iter().map(SecretValue::expose))
    }

    /// Whether it masks nothing.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// `text` with every form of every credential replaced by [`REDACTED`];
    /// borrowed when nothing was found. Overlapping or adjacent matches
    /// (two credentials sharing characters) become one marker, so no part
    /// of either survives.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.mask_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Every pattern is UTF-8 text, so a match in UTF-8 text starts
            // and ends on character boundaries and the result is UTF-8.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// The same on bytes (a log line).
    pub fn mask_bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        let Some(ac) = &self.automaton else {
            return Cow::Borrowed(bytes);
        };
        // Overlapping matches come in the order they end: sort, then merge.
        let mut found: Vec<(usize, usize)> = ac
            .find_overlapping_iter(bytes)
            .map(|m| (m.start(), m.end()))
            .collect();
        found.sort_unstable();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for m in found {
            match spans.last_mut() {
                Some(last) if m.0 <= last.1 => last.1 = last.1.max(m.1),
                _ => spans.push(m),
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for (start, end) in spans {
            out.extend_from_slice(&bytes[at..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            at = end;
        }
        out.extend_from_slice(&bytes[at..]);
        Cow::Owned(out)
    }

    /// Masks a parsed JSON document in place: every string and every
    /// object key at any depth. Masking the parsed value, rather than the
    /// JSON text, keeps the document valid JSON whatever is replaced, and
    /// sees strings with their JSON escapes already undone.
    pub fn mask_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if let Cow::Owned(masked) = self.mask(s) {
                    *s = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_value(v)),
            Value::Object(map) => {
                let taken = std::mem::take(map);
                for (key, mut item) in taken {
                    self.mask_value(&mut item);
                    map.insert(self.mask(&key).into_owned(), item);
                }
            }
            _ => {}
        }
    }

    /// For a text that was cut at a size limit: removes a tail that could be
    /// the start of any form of a credential (the rest of it was cut off, so
    /// [`Masker::mask`] cannot recognise it).
    pub fn cut_partial_tail(&self, text: &mut String) {
        loop {
            let cut = self
                .patterns
                .iter()
                .filter_map(|p| {
                    (1..p.len().min(text.len() + 1))
                        .rev()
                        .find(|&n| p.is_char_boundary(n) && text.ends_with(&p[..n]))
                })
                .max();
            match cut {
                Some(n) => text.truncate(text.len() - n),
                None => return,
            }
        }
    }
}

/// A digest standing for a pattern in the de-duplication set, so the set
/// holds no copy of a credential's form.
fn pattern_digest(pattern: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(pattern.as_bytes()).into()
}

/// Every distinct form of `secret` that is masked, the raw value first.
/// Empty for an empty secret.
fn variants(secret: &str) -> Vec<Zeroizing<String>> {
    if secret.is_empty() {
        return Vec::new();
    }
    let bytes = secret.as_bytes();
    let mut out: Vec<Zeroizing<String>> = vec![Zeroizing::new(secret.to_string())];
    let mut add = |v: String| {
        let v = Zeroizing::new(v);
        if v.len() >= MIN_VARIANT_LEN && !out.iter().any(|o| **o == *v) {
            out.push(v);
        }
    };
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            add(base64_middle(engine, bytes, offset));
        }
    }
    add(hex::encode(bytes));
    add(hex::encode_upper(bytes));
    for set in [RFC3986_RESERVED, JS_COMPONENT, EVERY_BYTE] {
        let upper = utf8_percent_encode(secret, set).to_string();
        add(lower_percent_hex(&upper));
        add(upper.replace("%20", "+"));
        add(lower_percent_hex(&upper).replace("%20", "+"));
        add(upper);
    }
    // As a log field written with `?` (Rust's `Debug`) or escaped for a log
    // line shows it (`\u{1b}` rather than JSON's `\u001b`).
    let debug = format!("{secret:?}");
    add(debug[1..debug.len() - 1].to_string());
    add(secret.escape_debug().to_string());
    for slash in [false, true] {
        for style in [
            Unicode::None,
            Unicode::NonAscii(Case::Lower),
            Unicode::NonAscii(Case::Upper),
            Unicode::NonAsciiAndHtml(Case::Lower),
            Unicode::NonAsciiAndHtml(Case::Upper),
        ] {
            add(json_escape(secret, slash, style));
        }
    }
    out
}

/// The base64 characters that depend only on `bytes` when they start
/// `offset` bytes into a 3-byte group of a longer encoded string.
fn base64_middle(engine: &base64::engine::GeneralPurpose, bytes: &[u8], offset: usize) -> String {
    let mut padded = Zeroizing::new(vec![0u8; offset]);
    padded.extend_from_slice(bytes);
    let encoded = Zeroizing::new(engine.encode(&*padded));
    // Character i carries bits 6i..6i+6; the secret holds bits 8*offset..
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + bytes.len())) / 6;
    if first >= end {
        return String::new();
    }
    encoded[first..end].to_string()
}

/// What stays unencoded under RFC 3986: letters, digits, `-._~`.
const RFC3986_RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// JavaScript's `encodeURIComponent`: also leaves `!*'()` alone.
const JS_COMPONENT: &AsciiSet = &RFC3986_RESERVED
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
/// Every character but letters and digits.
const EVERY_BYTE: &AsciiSet = NON_ALPHANUMERIC;

/// `%2F` -> `%2f`, leaving the rest alone.
fn lower_percent_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hex_left = 0;
    for c in text.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Case {
    Lower,
    Upper,
}

#[derive(Clone, Copy)]
enum Unicode {
    /// Non-ASCII characters as they are (serde_json, JSON.stringify).
    None,
    /// Non-ASCII as `\uXXXX` (Python, PHP).
    NonAscii(Case),
    /// Also `<>&'+` and the backtick (Go's HTML-safe and .NET's default
    /// encoders).
    NonAsciiAndHtml(Case),
}

/// `secret` as it appears between the quotes of a JSON string.
fn json_escape(secret: &str, slash: bool, style: Unicode) -> String {
    let mut out = String::with_capacity(secret.len() + 8);
    let unicode = |out: &mut String, c: char, case: Case| {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            match case {
                Case::Lower => out.push_str(&format!("\\u{unit:04x}")),
                Case::Upper => out.push_str(&format!("\\u{unit:04X}")),
            }
        }
    };
    for c in secret.chars() {
        match (c, style) {
            ('"', Unicode::NonAsciiAndHtml(case)) => unicode(&mut out, c, case),
            ('"', _) => out.push_str("\\\""),
            ('\\', _) => out.push_str("\\\\"),
            ('/', _) if slash => out.push_str("\\/"),
            ('\n', _) => out.push_str("\\n"),
            ('\r', _) => out.push_str("\\r"),
            ('\t', _) => out.push_str("\\t"),
            ('\u{8}', _) => out.push_str("\\b"),
            ('\u{c}', _) => out.push_str("\\f"),
            (c, Unicode::NonAscii(case) | Unicode::NonAsciiAndHtml(case)) if !c.is_ascii() => {
                unicode(&mut out, c, case);
            }
            ('<' | '>' | '&' | '\'' | '+' | '`', Unicode::NonAsciiAndHtml(case)) => {
                unicode(&mut out, c, case);
            }
            (c, _) if c.is_control() => unicode(&mut out, c, Case::Lower),
            (c, _) => out.push(c),
        }
    }
    out
}

/// Every value loaded so far and the masker for them all.
struct Known {
    values: Vec<Zeroizing<String>>,
    masker: Arc<Masker>,
}

static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(|| {
    Mutex::new(Known {
        values: Vec::new(),
        masker: Arc::new(Masker::default()),
    })
});

/// Adds a loaded value to the process-wide set [`current`] masks (a value
/// already known costs a comparison; a new one rebuilds the masker).
pub fn remember(value: &SecretValue) {
    let secret = value.expose();
    if secret.is_empty() {
        return;
    }
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if known.values.iter().any(|v| **v == *secret) {
        return;
    }
    if known.values.len() >= MAX_REMEMBERED {
        known.values.remove(0);
    }
    known.values.push(Zeroizing::new(secret.to_string()));
    let masker = Masker::new(known.values.iter().map(|v| v.as_str()));
    known.masker = Arc::new(masker);
}

/// The masker for every value this process loaded so far.
pub fn current() -> Arc<Masker> {
    KNOWN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .masker
        .clone()
}

/// A [`tracing_subscriber::fmt::MakeWriter`] that masks every log line
/// with [`current`] before it reaches the wrapped writer.
#[derive(Debug, Clone)]
pub struct MaskingMakeWriter<M>(pub M);

impl<'a, M> tracing_subscriber::fmt::MakeWriter<'a> for MaskingMakeWriter<M>
where
    M: tracing_subscriber::fmt::MakeWriter<'a>,
{
    type Writer = MaskingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter(self.0.make_writer())
    }
}

/// The writer [`MaskingMakeWriter`] hands out. The formatter writes one
/// whole event per call, so a credential is never split between writes.
#[derive(Debug)]
pub struct MaskingWriter<W>(W);

impl<W: io::Write> io::Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let masker = current();
        self.0.write_all(&masker.mask_bytes(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    /// Has `+`, `/`, `"`, `\`, `=`, a space and non-ASCII, so every form
    /// differs from the raw value.
    const SECRET: &str = "sk-live/9f+Q\"x\\y=z é~ÿ";

    fn masker() -> Masker {
        Masker::new([SECRET])
    }

    fn assert_masked(text: &str, form: &str) {
        let masked = masker().mask(text).into_owned();
        assert!(!masked.contains(form), "{masked}");
        assert!(masked.contains(REDACTED), "{masked}");
    }

    #[test]
    fn raw() {
        assert_masked(&format!("Bearer {SECRET} ok"), SECRET);
        let short = Masker::new(["abc"]);
        assert_eq!(short.mask("xabcx"), "x[REDACTED]x");
    }

    fn embedded(engine: &base64::engine::GeneralPurpose, offset: usize) -> (String, String) {
        let mut bytes = b"prefix:".to_vec();
        bytes.truncate(offset + 3);
        bytes.extend_from_slice(SECRET.as_bytes());
        bytes.extend_from_slice(b":suffix");
        let whole = engine.encode(&bytes);
        (whole, base64_middle(engine, SECRET.as_bytes(), offset))
    }

    fn base64_case(engine: &base64::engine::GeneralPurpose, offset: usize) {
        let (whole, middle) = embedded(engine, offset);
        assert!(whole.contains(&middle), "{whole} / {middle}");
        let masked = masker().mask(&whole).into_owned();
        assert!(masked.contains(REDACTED), "{masked}");
        // Nothing of the secret's own characters survives but at most one
        // mixed character at each end.
        assert!(masked.len() <= whole.len() - middle.len() + REDACTED.len());
    }

    #[test]
    fn base64_at_offset_0() {
        base64_case(&STANDARD, 0);
    }

    #[test]
    fn base64_at_offset_1() {
        base64_case(&STANDARD, 1);
    }

    #[test]
    fn base64_at_offset_2() {
        base64_case(&STANDARD, 2);
    }

    #[test]
    fn base64url_at_offset_0() {
        base64_case(&URL_SAFE, 0);
    }

    #[test]
    fn base64url_at_offset_1() {
        base64_case(&URL_SAFE, 1);
    }

    #[test]
    fn base64url_at_offset_2() {
        base64_case(&URL_SAFE, 2);
    }

    #[test]
    fn base64_of_the_secret_alone_with_padding() {
        let whole = STANDARD.encode(SECRET);
        let masked = masker().mask(&whole).into_owned();
        assert!(masked.starts_with(REDACTED), "{masked}");
        assert!(masked.len() <= REDACTED.len() + 3, "{masked}");
    }

    #[test]
    fn url_encoded_upper_and_lower_and_every_byte() {
        let upper = utf8_percent_encode(SECRET, RFC3986_RESERVED).to_string();
        assert_ne!(upper, SECRET);
        assert_masked(&format!("?token={upper}&x=1"), &upper);
        let lower = lower_percent_hex(&upper);
        assert_ne!(lower, upper);
        assert_masked(&format!("?token={lower}&x=1"), &lower);
        let every = utf8_percent_encode(SECRET, EVERY_BYTE).to_string();
        assert_masked(&every, &every);
        let form = upper.replace("%20", "+");
        assert_masked(&format!("token={form}"), &form);
    }

    #[test]
    fn hex_lower_and_upper() {
        let lower = hex::encode(SECRET);
        assert_masked(&format!("0x{lower}00"), &lower);
        let upper = hex::encode_upper(SECRET);
        assert_masked(&format!("0x{upper}00"), &upper);
    }

    #[test]
    fn json_escaped_forms() {
        let serde = serde_json::to_string(SECRET).unwrap();
        let serde = &serde[1..serde.len() - 1];
        assert_ne!(serde, SECRET);
        assert_masked(&format!(r#"{{"t":"{serde}"}}"#), serde);
        let slashed = serde.replace('/', "\\/");
        assert_masked(&format!(r#"cb({{"t":"{slashed}"}})"#), &slashed);
        for style in [
            Unicode::NonAscii(Case::Lower),
            Unicode::NonAsciiAndHtml(Case::Upper),
        ] {
            let escaped = json_escape(SECRET, true, style);
            assert!(escaped.contains("\\u00"), "{escaped}");
            // Round trip: it really is the secret inside a JSON string.
            let back: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
            assert_eq!(back, SECRET);
            assert_masked(&format!("\"{escaped}\""), &escaped);
        }
    }

    #[test]
    fn debug_escaped_in_a_log_field() {
        let secret = "tok\u{1b}en-\"value\"-42";
        let m = Masker::new([secret]);
        let line = format!("WARN reason={secret:?} done");
        assert_eq!(m.mask(&line), "WARN reason=\"[REDACTED]\" done");
        let escaped = secret.escape_debug().to_string();
        assert_eq!(m.mask(&escaped), REDACTED);
    }

    #[test]
    fn short_encoded_forms_are_not_masked_but_the_raw_value_is() {
        let m = Masker::new(["abcd"]);
        // hex of "abcd" is 8 bytes, kept; base64 middles are 5 or fewer.
        assert_eq!(m.mask("YWJj"), "YWJj");
        assert_eq!(m.mask("61626364"), REDACTED);
        assert!(variants("abcd").iter().skip(1).all(|v| v.len() >= 6));
    }

    #[test]
    fn json_values_stay_valid_and_keys_are_masked() {
        let mut v = serde_json::json!({"echo": format!("Bearer {SECRET}"), SECRET: [1, {"x": hex::encode(SECRET)}]});
        masker().mask_value(&mut v);
        let text = v.to_string();
        assert!(!text.contains("sk-live"), "{text}");
        assert_eq!(v["echo"], "Bearer [REDACTED]");
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }

    #[test]
    fn a_cut_text_loses_a_trailing_partial_form() {
        let m = Masker::new(["abcdefgh"]);
        let mut text = "token=abc".to_string();
        m.cut_partial_tail(&mut text);
        assert_eq!(text, "token=");
        let mut text = format!("x={}", &hex::encode("abcdefgh")[..5]);
        m.cut_partial_tail(&mut text);
        assert_eq!(text, "x=");
    }

    #[test]
    fn overlapping_forms_are_masked_in_one_pass() {
        let m = Masker::new(["secret-one", "one-two-three"]);
        assert_eq!(m.mask("secret-one-two-three"), REDACTED);
        assert_eq!(
            m.mask("a secret-one b one-two-three c"),
            "a [REDACTED] b [REDACTED] c"
        );
    }

    #[test]
    fn the_process_set_and_the_log_writer_mask_what_was_loaded() {
        let value = SecretValue::new("remembered-credential-42".into());
        remember(&value);
        remember(&value);
        let line = format!("event token={}\n", hex::encode(value.expose()));
        let mut out = Vec::new();
        io::Write::write_all(&mut MaskingWriter(&mut out), line.as_bytes()).unwrap();
        assert_eq!(out, b"event token=[REDACTED]\n");
        assert!(current().mask(value.expose()) == REDACTED);
    }
}
