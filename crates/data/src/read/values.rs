//! Parsing single field values from raw bytes: integers, finite floats,
//! decimal seconds to integer milliseconds, ISO-8601 UTC timestamps and
//! booleans. Each parser returns `None` on malformed input so that the
//! caller, which knows the file, line and column, can build the error.

/// Parses a decimal integer with an optional sign; `None` on anything else
/// (empty, spaces, a fraction, overflow).
#[inline]
pub(crate) fn parse_i64(b: &[u8]) -> Option<i64> {
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return None;
    }
    // 18 digits never overflow an i64, so the common case needs no checks.
    if digits.len() <= 18 {
        let mut v: i64 = 0;
        for &c in digits {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + i64::from(d);
        }
        return Some(if negative { -v } else { v });
    }
    let mut v: i64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?;
        v = if negative { v.checked_sub(i64::from(d))? } else { v.checked_add(i64::from(d))? };
    }
    Some(v)
}

/// Why a float field was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatError {
    /// Not a number at all.
    Malformed,
    /// NaN or an infinity.
    NotFinite,
}

/// Parses a finite float; NaN and infinities are rejected.
pub(crate) fn parse_f64(b: &[u8]) -> Result<f64, FloatError> {
    let s = std::str::from_utf8(b).map_err(|_| FloatError::Malformed)?;
    let v: f64 = s.parse().map_err(|_| FloatError::Malformed)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(FloatError::NotFinite)
    }
}

/// Parses a finite `f32` (values outside the `f32` range count as not finite).
#[inline]
pub(crate) fn parse_f32(b: &[u8]) -> Result<f32, FloatError> {
    if let Some(v) = short_decimal_f32(b) {
        return Ok(v);
    }
    let s = std::str::from_utf8(b).map_err(|_| FloatError::Malformed)?;
    let v: f32 = s.parse().map_err(|_| FloatError::Malformed)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(FloatError::NotFinite)
    }
}

/// The common short decimals (`3`, `25000.0`, `-1.5`) without the general
/// parser: when the digits form an integer below 2^24 and there are at most
/// 10 fraction digits, both it and the power of ten are exact in `f32`, so
/// one division rounds correctly. `None` means "use the general parser".
#[inline]
fn short_decimal_f32(b: &[u8]) -> Option<f32> {
    const POW10: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    let mut mantissa: u32 = 0;
    let mut fraction_digits = None;
    let mut n_digits = 0;
    for (i, &c) in digits.iter().enumerate() {
        if c == b'.' && fraction_digits.is_none() {
            fraction_digits = Some(digits.len() - i - 1);
            continue;
        }
        let d = c.wrapping_sub(b'0');
        if d > 9 || n_digits == 7 {
            return None;
        }
        mantissa = mantissa * 10 + u32::from(d);
        n_digits += 1;
    }
    if n_digits == 0 {
        return None;
    }
    // 7 digits stay below 10^7 < 2^24.
    let v = mantissa as f32 / POW10[fraction_digits.unwrap_or(0)];
    Some(if negative { -v } else { v })
}

/// Parses a decimal number and scales it by `10^scale` into an integer:
/// `parse_scaled(b"1396321232.5", 3) == Some(1396321232500)`. Fraction
/// digits beyond `scale` are dropped (truncation toward zero); exponent
/// notation goes through `f64` and is rounded.
#[inline]
pub(crate) fn parse_scaled(b: &[u8], scale: u32) -> Option<i64> {
    let (negative, rest) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let (int_part, frac_part) = match rest.iter().position(|&c| c == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if !all_digits(int_part) || !all_digits(frac_part) {
        if rest.iter().any(|&c| c == b'e' || c == b'E') {
            let v = parse_f64(b).ok()? * 10f64.powi(scale as i32);
            let r = v.round();
            // i64::MAX as f64 rounds up to 2^63, which is already out of range.
            return (-9.2e18..=9.2e18).contains(&r).then_some(r as i64);
        }
        return None;
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut v: i64 = if int_part.is_empty() { 0 } else { parse_i64(int_part)? };
    for i in 0..scale as usize {
        let d = frac_part.get(i).map_or(0, |c| i64::from(c - b'0'));
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    Some(if negative { -v } else { v })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (any year).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year to start in March so that the leap day is the last
    // day of the year; then a 400-year era has a fixed number of days.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Reads exactly `n` ASCII digits at `*pos`, advancing it.
fn digits(b: &[u8], pos: &mut usize, n: usize) -> Option<u32> {
    let s = b.get(*pos..*pos + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    *pos += n;
    Some(v)
}

/// Parses an ISO-8601 timestamp into milliseconds since the Unix epoch.
///
/// Accepts `YYYY-MM-DD`, optionally followed by `T` (or a space) and
/// `HH:MM[:SS[.fraction]]`, optionally followed by `Z` or an offset
/// `±HH[:MM]`; no suffix means UTC. Fraction digits beyond milliseconds are
/// dropped. Returns `None` on any malformed or out-of-range part.
pub(crate) fn parse_iso8601_ms(b: &[u8]) -> Option<i64> {
    let mut p = 0;
    let year = digits(b, &mut p, 4)?;
    let expect = |p: &mut usize, c: u8| -> Option<()> { (b.get(*p) == Some(&c)).then(|| *p += 1) };
    expect(&mut p, b'-')?;
    let month = digits(b, &mut p, 2)?;
    expect(&mut p, b'-')?;
    let day = digits(b, &mut p, 2)?;
    let year = i64::from(year);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if p == b.len() {
        return Some(ms);
    }
    if !matches!(b[p], b'T' | b't' | b' ') {
        return None;
    }
    p += 1;
    let hour = digits(b, &mut p, 2)?;
    expect(&mut p, b':')?;
    let minute = digits(b, &mut p, 2)?;
    let mut second = 0;
    let mut millis = 0;
    if b.get(p) == Some(&b':') {
        p += 1;
        second = digits(b, &mut p, 2)?;
        if matches!(b.get(p), Some(b'.') | Some(b',')) {
            p += 1;
            let start = p;
            while b.get(p).is_some_and(u8::is_ascii_digit) {
                p += 1;
            }
            let frac = &b[start..p];
            if frac.is_empty() {
                return None;
            }
            for i in 0..3 {
                millis = millis * 10 + frac.get(i).map_or(0, |c| i64::from(c - b'0'));
            }
        }
    }
    // A leap second (60) is accepted and lands on the next minute's first second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    ms += (i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)) * 1000 + millis;
    match b.get(p) {
        None => Some(ms),
        Some(b'Z' | b'z') if p + 1 == b.len() => Some(ms),
        Some(&sign @ (b'+' | b'-')) => {
            p += 1;
            let oh = digits(b, &mut p, 2)?;
            let om = if p == b.len() {
                0
            } else {
                if b.get(p) == Some(&b':') {
                    p += 1;
                }
                digits(b, &mut p, 2)?
            };
            if p != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let offset = (i64::from(oh) * 60 + i64::from(om)) * 60_000;
            // Local time minus its offset is UTC.
            Some(if sign == b'+' { ms - offset } else { ms + offset })
        }
        Some(_) => None,
    }
}

/// Parses a boolean: `True`/`False` in any case, or `1`/`0`.
#[inline]
pub(crate) fn parse_bool(b: &[u8]) -> Option<bool> {
    if b.eq_ignore_ascii_case(b"true") || b == b"1" {
        Some(true)
    } else if b.eq_ignore_ascii_case(b"false") || b == b"0" {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(parse_i64(b"196"), Some(196));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"+7"), Some(7));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        for bad in [&b""[..], b"-", b"1.0", b" 1", b"1 ", b"abc", b"1e3", b"0x10"] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_reject_nan_and_infinity() {
        assert_eq!(parse_f32(b"3"), Ok(3.0));
        assert_eq!(parse_f32(b"25000.0"), Ok(25000.0));
        assert_eq!(parse_f32(b"-1.5e2"), Ok(-150.0));
        assert_eq!(parse_f32(b"NaN"), Err(FloatError::NotFinite));
        assert_eq!(parse_f32(b"inf"), Err(FloatError::NotFinite));
        assert_eq!(parse_f32(b"-Infinity"), Err(FloatError::NotFinite));
        assert_eq!(parse_f32(b"1e39"), Err(FloatError::NotFinite));
        assert_eq!(parse_f32(b"x"), Err(FloatError::Malformed));
        assert_eq!(parse_f32(b"1.2.3"), Err(FloatError::Malformed));
        assert_eq!(parse_f32(b"."), Err(FloatError::Malformed));
        assert_eq!(parse_f32(b"-"), Err(FloatError::Malformed));
        assert_eq!(parse_f32(b""), Err(FloatError::Malformed));
    }

    /// The short path agrees with the standard parser bit for bit.
    #[test]
    fn short_decimals_match_the_general_parser() {
        let mut cases: Vec<String> =
            ["0", "3", "-1.5", "25000.0", "0.1", "1234567", "9999.999", ".5", "5.", "0.0000001"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let digits = format!("{}", (x >> 40) % 10_000_000);
            let point = (x >> 20) as usize % (digits.len() + 1);
            cases.push(format!("{}.{}", &digits[..point], &digits[point..]));
        }
        for s in cases {
            let expected: f32 = s.parse().unwrap();
            assert_eq!(parse_f32(s.as_bytes()).map(f32::to_bits), Ok(expected.to_bits()), "{s}");
        }
    }

    #[test]
    fn scaled_decimals() {
        assert_eq!(parse_scaled(b"1396321232.0", 3), Some(1_396_321_232_000));
        assert_eq!(parse_scaled(b"881250949", 3), Some(881_250_949_000));
        assert_eq!(parse_scaled(b"1.5", 3), Some(1500));
        assert_eq!(parse_scaled(b"1.23456", 3), Some(1234));
        assert_eq!(parse_scaled(b"-1.5", 3), Some(-1500));
        assert_eq!(parse_scaled(b".5", 3), Some(500));
        assert_eq!(parse_scaled(b"7.", 3), Some(7000));
        assert_eq!(parse_scaled(b"1.4e9", 3), Some(1_400_000_000_000));
        assert_eq!(parse_scaled(b"25000.0", 0), Some(25000));
        for bad in [&b""[..], b".", b"-", b"1.2.3", b"nan", b"inf", b"1e400", b"12:00"] {
            assert_eq!(parse_scaled(bad, 3), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1970, 1, 2), 1);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2014-04-07 = 1396828800 s (checked with `date -u -d 2014-04-07 +%s`).
        assert_eq!(days_from_civil(2014, 4, 7) * 86_400, 1_396_828_800);
        assert_eq!(days_from_civil(2016, 2, 29) + 1, days_from_civil(2016, 3, 1));
    }

    #[test]
    fn iso8601_timestamps() {
        // `date -u -d 2014-04-07T10:51:09 +%s` = 1396867869.
        assert_eq!(parse_iso8601_ms(b"2014-04-07T10:51:09.277Z"), Some(1_396_867_869_277));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T10:51:09Z"), Some(1_396_867_869_000));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T10:51:09.2Z"), Some(1_396_867_869_200));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T10:51:09.123456Z"), Some(1_396_867_869_123));
        assert_eq!(parse_iso8601_ms(b"2014-04-07 10:51:09"), Some(1_396_867_869_000));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T12:51:09+02:00"), Some(1_396_867_869_000));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T09:51:09-0100"), Some(1_396_867_869_000));
        assert_eq!(parse_iso8601_ms(b"2014-04-07T10:51Z"), Some(1_396_867_860_000));
        assert_eq!(parse_iso8601_ms(b"2014-04-07"), Some(1_396_828_800_000));
        assert_eq!(parse_iso8601_ms(b"1969-12-31T23:59:59Z"), Some(-1000));
        for bad in [
            &b""[..],
            b"2014-04-07T",
            b"2014-13-07T10:51:09Z",
            b"2014-02-30T10:51:09Z",
            b"2014-04-07T24:00:00Z",
            b"2014-04-07T10:51:09.Z",
            b"2014-04-07T10:51:09ZZ",
            b"2014/04/07",
            b"1396867869",
            b"2014-04-07T10:51:09 Z",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool(b"True"), Some(true));
        assert_eq!(parse_bool(b"false"), Some(false));
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"0"), Some(false));
        assert_eq!(parse_bool(b"yes"), None);
        assert_eq!(parse_bool(b""), None);
    }
}
