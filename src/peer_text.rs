//! Text a peer chose, made safe to log and to echo in errors: names are cut to what
//! PostgreSQL keeps of them (63 bytes, NAMEDATALEN - 1), other strings to a small bound with a
//! marker, always at a character boundary (DESIGN §6: nothing a client sends can flood the
//! operator).

use std::borrow::Cow;

/// Bytes PostgreSQL keeps of a user or database name.
pub(crate) const NAME_MAX: usize = 63;

/// `name` as PostgreSQL keeps it: its first 63 bytes (at a character boundary).
pub(crate) fn name(name: &str) -> &str {
    &name[..char_boundary(name, NAME_MAX)]
}

/// `text` for a log line or an error message: at most `NAME_MAX` bytes of it, and a marker
/// saying how much was left out.
pub(crate) fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= NAME_MAX {
        return Cow::Borrowed(text);
    }
    let cut = char_boundary(text, NAME_MAX);
    Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..cut],
        text.len() - cut
    ))
}

/// The largest index ≤ `max` that is a character boundary of `text`.
fn char_boundary(text: &str, max: usize) -> usize {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_like_postgresql_cuts_them() {
        assert_eq!(name("app"), "app");
        assert_eq!(name(&"u".repeat(100)).len(), 63);
        // A multi-byte character across the limit is left out whole.
        let tricky = format!("{}é", "a".repeat(62));
        assert_eq!(name(&tricky), "a".repeat(62));
    }

    #[test]
    fn long_text_is_bounded_with_a_marker() {
        assert_eq!(bounded("short"), "short");
        let text = "M".repeat(9_000);
        let long = bounded(&text);
        assert!(long.len() < 100, "{long}");
        assert!(long.ends_with("(8937 more bytes)"), "{long}");
    }
}
