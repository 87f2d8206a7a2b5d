//! Time as the control plane reads and writes it: Unix seconds now,
//! durations as people type them (`90`, `15m`, `12h`, `30d`), and UTC dates
//! for tables and reports.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A count with an optional unit `s`, `m`, `h` or `d` (none: seconds).
/// `None` for anything else, or on overflow.
pub fn parse_duration_secs(text: &str) -> Option<i64> {
    let (digits, unit) = text.split_at(
        text.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    digits.parse::<i64>().ok()?.checked_mul(mult)
}

/// Unix seconds as `YYYY-MM-DD HH:MM` UTC (Howard Hinnant's civil-from-days).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Unix seconds as the UTC date `YYYY-MM-DD`.
pub fn utc_date(secs: i64) -> String {
    let mut date = utc(secs);
    date.truncate(10);
    date
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_an_optional_unit() {
        assert_eq!(parse_duration_secs("90"), Some(90));
        assert_eq!(parse_duration_secs("15m"), Some(900));
        assert_eq!(parse_duration_secs("30d"), Some(2_592_000));
        assert_eq!(parse_duration_secs("-5d"), Some(-432_000));
        assert_eq!(parse_duration_secs("10y"), None);
        assert_eq!(parse_duration_secs("d"), None);
        assert_eq!(parse_duration_secs("99999999999999999d"), None);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(951_868_799), "2000-02-29");
    }
}
