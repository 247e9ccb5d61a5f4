//! Text from the wire, as it goes into the worker's logs.
//!
//! The rule: every log field whose value comes from the orchestrator (task
//! names and ids, plan ids, reasons, error messages, anything formatted
//! from them) is logged either with `?` (`Debug` of a string escapes
//! control characters) or through [`shown`]. Neither lets a CR, LF, ESC,
//! NUL or any other control character reach the log raw, so a value cannot
//! forge a log line or drive the reader's terminal. `tracing`'s `%`
//! (`Display`) is kept for values the worker produces itself.

use std::fmt::{self, Write as _};

/// A value whose `Display` escapes every control character (C0, DEL, C1)
/// and the Unicode line and paragraph separators; everything else is
/// written as is. Made by [`shown`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<T>(T);

/// Wraps `value` so that its text is logged with control characters
/// escaped (`\r`, `\n`, `\0`, `\u{1b}`, ...): `tracing::warn!(reason =
/// %shown(&message), ...)`.
pub fn shown<T: fmt::Display>(value: T) -> Shown<T> {
    Shown(value)
}

impl<T: fmt::Display> fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// Passes text through, escaping what [`Shown`] escapes.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                for escaped in c.escape_debug() {
                    self.0.write_char(escaped)?;
                }
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_is_kept() {
        let forged = "ok\r\n2026-01-01T00:00:00Z  INFO fake\u{1b}[2J\0\u{85}\u{2028}é\t";
        let text = shown(forged).to_string();
        assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        assert_eq!(
            text,
            "ok\\r\\n2026-01-01T00:00:00Z  INFO fake\\u{1b}[2J\\0\\u{85}\\u{2028}é\\t"
        );
        assert_eq!(shown("T-1.plan_7:x").to_string(), "T-1.plan_7:x");
    }
}
