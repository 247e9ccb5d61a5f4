//! W3C Trace Context (level 1): the `traceparent` value, parsed and
//! checked once, used by both sides.
//!
//! A plan carries one `traceparent` (given by the agent, or made by the
//! orchestrator); every `Assignment.traceparent` names the same trace with
//! a parent-id of its own; the worker logs the trace id on every line of
//! the task and sends a `traceparent` header with a new parent-id for its
//! own call to the internal API. This module is the contract's rule for
//! the value (see "Trace context" in the .proto header and
//! `proto/testvectors/traceparent.json`), so the orchestrator and the
//! worker cannot disagree on what is valid.
//!
//! It lives here rather than in the worker or the orchestrator because it
//! is the form of a wire field, like [`crate::check_id`]: a plain
//! validated value with no transport and no I/O.
//!
//! What it does not do: `tracestate` (never carried, so never sent), span
//! export or sampling decisions (the sampled flag is passed on as
//! received), or any tracing-library integration.

use std::fmt;
use std::str::FromStr;

/// The HTTP header name, lower case as W3C Trace Context writes it.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The `tracestate` header, which this project never sends (it carries no
/// vendor state).
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Length of a version `00` traceparent: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

/// The one flag level 1 defines: the caller may have recorded its span.
const SAMPLED: u8 = 0x01;

/// A valid W3C `traceparent`: trace id, parent id and trace flags.
///
/// Always written in version `00` form (the only version level 1 defines);
/// a value of a later version is accepted as level 1 says (its first four
/// fields, the rest ignored) and written back as version `00`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a text is not a valid `traceparent`. The value itself is never in
/// the message (it came from outside and may be huge or hold control
/// characters); each variant names the field and the rule, in a clause
/// that reads after the word "traceparent" (`traceparent has version ff,
/// ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Shorter than 55 characters. Send
    /// `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`.
    #[error(
        "is {0} characters long; a traceparent is 55: 00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>"
    )]
    TooShort(usize),
    /// Version `00` with more than 55 characters. Send exactly the four
    /// fields.
    #[error("is {0} characters long; a version 00 traceparent is exactly 55")]
    TooLong(usize),
    /// The version is not two lower-case hex digits. Send `00`.
    #[error("has a version that is not two lower-case hex digits (send 00)")]
    Version,
    /// Version `ff`, which W3C Trace Context forbids. Send `00`.
    #[error("has version ff, which W3C Trace Context forbids (send 00)")]
    VersionForbidden,
    /// A field is not followed by `-` where it must be.
    #[error("lacks the `-` that must follow its {0}")]
    Separator(&'static str),
    /// A field is not lower-case hex of its length. Upper case is refused
    /// too, as level 1 says.
    #[error("has a {field} that is not {digits} lower-case hex digits")]
    NotHex {
        /// `trace-id`, `parent-id` or `trace-flags`.
        field: &'static str,
        /// How many digits it must have.
        digits: usize,
    },
    /// The trace-id or parent-id is all zeros, which level 1 makes
    /// invalid. Use random ids.
    #[error("has an all-zero {0}, which W3C Trace Context makes invalid")]
    AllZeros(&'static str),
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn hex_field<const N: usize>(
    bytes: &[u8],
    field: &'static str,
) -> Result<[u8; N], TraceParentError> {
    let not_hex = TraceParentError::NotHex {
        field,
        digits: N * 2,
    };
    if !is_lower_hex(bytes) {
        return Err(not_hex);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(bytes, &mut out).map_err(|_| not_hex)?;
    Ok(out)
}

/// Random bytes, never all zeros (an all-zero id is invalid).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

impl TraceParent {
    /// Parses and checks `text` per W3C Trace Context level 1: version
    /// `00` is exactly `00-<32 hex>-<16 hex>-<2 hex>` in lower case, with
    /// a trace-id and a parent-id that are not all zeros; version `ff` is
    /// refused; a later version is read from its first 55 characters, which
    /// must be followed by the end or a `-` (fields it may add are
    /// ignored).
    ///
    /// # Errors
    /// [`TraceParentError`] naming the field and the rule broken.
    pub fn parse(text: &str) -> Result<TraceParent, TraceParentError> {
        let b = text.as_bytes();
        if b.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::TooShort(b.len()));
        }
        let version = &b[0..2];
        if !is_lower_hex(version) {
            return Err(TraceParentError::Version);
        }
        if version == b"ff" {
            return Err(TraceParentError::VersionForbidden);
        }
        if version == b"00" && b.len() > TRACEPARENT_LEN {
            return Err(TraceParentError::TooLong(b.len()));
        }
        if b[2] != b'-' {
            return Err(TraceParentError::Separator("version"));
        }
        let trace_id: [u8; 16] = hex_field(&b[3..35], "trace-id")?;
        if b[35] != b'-' {
            return Err(TraceParentError::Separator("trace-id"));
        }
        let parent_id: [u8; 8] = hex_field(&b[36..52], "parent-id")?;
        if b[52] != b'-' {
            return Err(TraceParentError::Separator("parent-id"));
        }
        let [flags]: [u8; 1] = hex_field(&b[53..55], "trace-flags")?;
        if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
            return Err(TraceParentError::Separator("trace-flags"));
        }
        if trace_id == [0; 16] {
            return Err(TraceParentError::AllZeros("trace-id"));
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::AllZeros("parent-id"));
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace: a random trace-id, a random parent-id and the sampled
    /// flag (`01`). What the orchestrator gives a plan submitted without a
    /// `traceparent`, and what the worker starts when an assignment has
    /// none (or an invalid one).
    pub fn new_trace() -> TraceParent {
        TraceParent {
            trace_id: random_id(),
            parent_id: random_id(),
            flags: SAMPLED,
        }
    }

    /// The traceparent of a new span inside this one's trace: the same
    /// trace-id, a new random parent-id, the sampled flag as here and every
    /// other flag bit 0 (level 1 defines no other flag and says to send
    /// them as 0). What each hop sends onward: the orchestrator per
    /// assignment, the worker per HTTP call.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: random_id(),
            flags: self.flags & SAMPLED,
        }
    }

    /// The trace-id: 32 lower-case hex digits, the same on every hop.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The parent-id: 16 lower-case hex digits naming the sender's span.
    pub fn parent_id(&self) -> String {
        hex::encode(self.parent_id)
    }

    /// The trace flags as received.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

impl fmt::Display for TraceParent {
    /// The version `00` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.parent_id(),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(text: &str) -> Result<TraceParent, TraceParentError> {
        TraceParent::parse(text)
    }
}

impl serde::Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TraceParent::parse(&text).map_err(|e| serde::de::Error::custom(format!("traceparent {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_round_trips_with_its_fields() {
        let t = TraceParent::parse(VALID).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
        assert!(t.is_sampled());
        assert_eq!(t.to_string(), VALID);
        assert_eq!(VALID.parse::<TraceParent>().unwrap(), t);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn every_malformed_form_is_refused_naming_the_rule() {
        let cases: &[(&str, TraceParentError)] = &[
            ("", TraceParentError::TooShort(0)),
            (&VALID[..54], TraceParentError::TooShort(54)),
            (&format!("{VALID}-"), TraceParentError::TooLong(56)),
            (&format!("{VALID}00"), TraceParentError::TooLong(57)),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::VersionForbidden,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Separator("version"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                TraceParentError::Separator("trace-id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
                TraceParentError::Separator("parent-id"),
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::NotHex {
                    field: "trace-id",
                    digits: 32,
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
                TraceParentError::NotHex {
                    field: "trace-id",
                    digits: 32,
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                TraceParentError::NotHex {
                    field: "parent-id",
                    digits: 16,
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0X",
                TraceParentError::NotHex {
                    field: "trace-flags",
                    digits: 2,
                },
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::AllZeros("trace-id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::AllZeros("parent-id"),
            ),
            // Multi-byte characters count as bytes and are not hex.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
                TraceParentError::NotHex {
                    field: "trace-id",
                    digits: 32,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(TraceParent::parse(text).as_ref(), Err(expected), "{text:?}");
        }
        let message = TraceParent::parse("00-zz\n").unwrap_err().to_string();
        assert!(message.contains("55"), "{message}");
        assert!(
            !message.contains('\n') && !message.contains("zz"),
            "never echoed: {message}"
        );
    }

    #[test]
    fn a_later_version_is_read_from_its_first_four_fields_and_written_as_version_00() {
        let t =
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), VALID);
        let extended = TraceParent::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        )
        .unwrap();
        assert_eq!(extended.to_string(), VALID);
        assert_eq!(
            TraceParent::parse(
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future"
            ),
            Err(TraceParentError::Separator("trace-flags"))
        );
    }

    #[test]
    fn a_new_trace_is_valid_sampled_and_random() {
        let a = TraceParent::new_trace();
        let b = TraceParent::new_trace();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.is_sampled());
        assert_eq!(TraceParent::parse(&a.to_string()), Ok(a));
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_sampled_flag_and_gets_a_new_parent_id() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_eq!(child.flags(), 0x01, "undefined flag bits are sent as 0");
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(unsampled.child().flags(), 0);
    }

    #[test]
    fn serde_writes_the_header_text_and_refuses_an_invalid_one() {
        let t = TraceParent::parse(VALID).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{VALID}\""));
        assert_eq!(
            serde_json::from_str::<TraceParent>(&format!("\"{VALID}\"")).unwrap(),
            t
        );
        let err = serde_json::from_str::<TraceParent>("\"00-1\"").unwrap_err();
        assert!(
            err.to_string().contains("traceparent is 4 characters"),
            "{err}"
        );
    }

    #[test]
    fn the_test_vectors_hold() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../testvectors/traceparent.json")).unwrap();
        let valid = vectors["valid"].as_array().unwrap();
        let invalid = vectors["invalid"].as_array().unwrap();
        assert!(!valid.is_empty() && !invalid.is_empty());
        for case in valid {
            let text = case["traceparent"].as_str().unwrap();
            let t = TraceParent::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(t.trace_id(), case["trace_id"].as_str().unwrap(), "{text}");
            assert_eq!(t.parent_id(), case["parent_id"].as_str().unwrap(), "{text}");
            assert_eq!(
                u64::from(t.flags()),
                case["flags"].as_u64().unwrap(),
                "{text}"
            );
            assert_eq!(
                t.to_string(),
                case["written_as"].as_str().unwrap(),
                "{text}"
            );
        }
        for case in invalid {
            let text = case["traceparent"].as_str().unwrap();
            assert!(TraceParent::parse(text).is_err(), "{text:?} was accepted");
        }
    }
}
