//! What Suture learns from a server right after login (DESIGN §5): its idle limits as they apply
//! to the user and database, and whether it is read-only. The query and the parsing of
//! PostgreSQL's interval display live here; running it is `BackendConn`'s.

use std::time::Duration;

/// Reads the limits and the role as they apply to this user and database (role and database
/// settings included). `current_setting(.., true)` gives NULL on servers without the setting.
pub(crate) const DISCOVERY_SQL: &str = "SELECT current_setting('idle_session_timeout', true), \
     current_setting('idle_in_transaction_session_timeout', true), \
     current_setting('transaction_read_only', true)";

/// Parses a time setting as `current_setting` shows it (`0`, `500ms`, `1s`, `5min`, `1h`, `1d`,
/// a bare number being milliseconds). `None` for zero or negative (disabled) and for anything
/// unreadable.
pub(crate) fn parse_pg_interval(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: i64 = digits.parse().ok()?;
    let number = u64::try_from(number).ok().filter(|n| *n > 0)?;
    let millis_per_unit: u64 = match unit.trim() {
        "us" => return Some(Duration::from_micros(number)),
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_intervals() {
        let ms = Duration::from_millis;
        assert_eq!(parse_pg_interval("0"), None);
        assert_eq!(parse_pg_interval("0ms"), None);
        assert_eq!(parse_pg_interval("-1"), None);
        assert_eq!(parse_pg_interval("250"), Some(ms(250)));
        assert_eq!(parse_pg_interval("500ms"), Some(ms(500)));
        assert_eq!(parse_pg_interval("1s"), Some(ms(1_000)));
        assert_eq!(parse_pg_interval("5min"), Some(ms(300_000)));
        assert_eq!(parse_pg_interval("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_pg_interval("1d"), Some(ms(86_400_000)));
        assert_eq!(parse_pg_interval(" 10s "), Some(ms(10_000)));
        assert_eq!(parse_pg_interval("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse_pg_interval(""), None);
        assert_eq!(parse_pg_interval("s"), None);
        assert_eq!(parse_pg_interval("5 fortnights"), None);
        assert_eq!(parse_pg_interval("99999999999999999999d"), None);
    }
}
