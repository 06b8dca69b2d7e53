//! Cutting delimited text into lines and fields, and decoding field bytes to
//! text (UTF-8 where valid, each other byte as Latin-1).
//!
//! Lines end at `\n`; a `\r` before it is dropped, so CRLF files read like
//! LF files. Quoting (RFC 4180 style: a field that starts with `"` runs to
//! the next lone `"`, and `""` inside stands for one quote) is optional and
//! never spans lines, which is what lets blocks be cut at any newline.

use std::borrow::Cow;

const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// A word with bit 7 set in exactly the bytes of `word` equal to the byte
/// repeated in `pattern`. Exact per byte: `(x & 0x7F) + 0x7F` never carries
/// into the next byte.
#[inline]
fn equal_bytes(word: u64, pattern: u64) -> u64 {
    let x = word ^ pattern;
    !((((x & LOW7) + LOW7) | x) | LOW7)
}

#[inline]
fn word_at(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Position of the first `needle` in `haystack`, eight bytes at a time.
#[inline]
pub(crate) fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    let pattern = 0x0101_0101_0101_0101 * u64::from(needle);
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let hits = equal_bytes(word_at(chunk), pattern);
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&c| c == needle).map(|p| offset + p)
}

/// Fields of `line` split on the single byte `delimiter`, eight bytes at a time.
#[inline]
fn split_on_byte(line: &[u8], delimiter: u8, out: &mut Vec<Field>) {
    let pattern = 0x0101_0101_0101_0101 * u64::from(delimiter);
    let mut start = 0;
    let mut chunks = line.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut hits = equal_bytes(word_at(chunk), pattern);
        while hits != 0 {
            let end = offset + (hits.trailing_zeros() / 8) as usize;
            out.push(Field { start, end, escaped: false });
            start = end + 1;
            hits &= hits - 1;
        }
        offset += 8;
    }
    for (i, &c) in chunks.remainder().iter().enumerate() {
        if c == delimiter {
            out.push(Field { start, end: offset + i, escaped: false });
            start = offset + i + 1;
        }
    }
    out.push(Field { start, end: line.len(), escaped: false });
}

/// Splits `text` at the first newline: the line (without `\n` and a final
/// `\r`) and the rest after the newline.
#[inline]
pub(crate) fn next_line(text: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match find_byte(text, b'\n') {
        Some(p) => (&text[..p], &text[p + 1..]),
        None => (text, &text[text.len()..]),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), rest)
}

/// A field separator: one byte, or a sequence such as `::`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delimiter(Vec<u8>);

impl Delimiter {
    /// The delimiter written as `text` (`None` when empty or containing a newline).
    pub(crate) fn new(text: &str) -> Option<Delimiter> {
        let b = text.as_bytes();
        (!b.is_empty() && !b.contains(&b'\n') && !b.contains(&b'\r')).then(|| Delimiter(b.to_vec()))
    }

    /// The delimiter as shown in messages (`\t` spelled out).
    pub(crate) fn shown(&self) -> String {
        String::from_utf8_lossy(&self.0).replace('\t', "\\t")
    }

    /// The delimiter's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// True for a delimiter of spaces or tabs only (where runs of it are one separator).
    pub(crate) fn is_blank(&self) -> bool {
        self.0.iter().all(|&b| b == b' ' || b == b'\t')
    }

    /// `text` split at its first delimiter (all of it and nothing when there is none).
    pub(crate) fn split_once<'a>(&self, text: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        match self.find(text) {
            Some(p) => (&text[..p], &text[p + self.0.len()..]),
            None => (text, &text[text.len()..]),
        }
    }

    /// Position of the first delimiter in `text`.
    fn find(&self, text: &[u8]) -> Option<usize> {
        let first = self.0[0];
        if self.0.len() == 1 {
            return find_byte(text, first);
        }
        let mut from = 0;
        while let Some(p) = find_byte(&text[from..], first) {
            let at = from + p;
            if text[at..].starts_with(&self.0) {
                return Some(at);
            }
            from = at + 1;
        }
        None
    }
}

/// One field of a line, as a byte range; `escaped` when it was quoted and
/// holds doubled quotes that still need undoubling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Field {
    /// The field's bytes in `line`, with doubled quotes undoubled.
    #[inline]
    pub(crate) fn bytes<'a>(&self, line: &'a [u8]) -> Cow<'a, [u8]> {
        let raw = &line[self.start..self.end];
        if !self.escaped {
            return Cow::Borrowed(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            out.push(raw[i]);
            i += if raw[i] == b'"' { 2 } else { 1 };
        }
        Cow::Owned(out)
    }
}

/// A malformed quoted field: its 0-based index and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuoteError {
    /// 0-based field index.
    pub(crate) field: usize,
    /// What is wrong.
    pub(crate) message: &'static str,
}

/// Cuts lines into fields.
#[derive(Debug, Clone)]
pub(crate) struct Splitter {
    delimiter: Delimiter,
    quote: bool,
}

impl Splitter {
    /// A splitter on `delimiter`, honouring quotes when `quote` is set.
    pub(crate) fn new(delimiter: Delimiter, quote: bool) -> Splitter {
        Splitter { delimiter, quote }
    }

    /// Splits `line` into `out` (cleared first).
    pub(crate) fn split(&self, line: &[u8], out: &mut Vec<Field>) -> Result<(), QuoteError> {
        out.clear();
        if let [d] = self.delimiter.0[..] {
            if !self.quote || !line.contains(&b'"') {
                split_on_byte(line, d, out);
                return Ok(());
            }
        }
        let width = self.delimiter.0.len();
        let mut start = 0;
        loop {
            if self.quote && line.get(start) == Some(&b'"') {
                let field = out.len();
                let mut p = start + 1;
                let mut escaped = false;
                let close = loop {
                    let Some(q) = find_byte(&line[p..], b'"') else {
                        return Err(QuoteError { field, message: "quoted field has no closing quote" });
                    };
                    let q = p + q;
                    if line.get(q + 1) == Some(&b'"') {
                        escaped = true;
                        p = q + 2;
                    } else {
                        break q;
                    }
                };
                out.push(Field { start: start + 1, end: close, escaped });
                let after = close + 1;
                if after == line.len() {
                    return Ok(());
                }
                if !line[after..].starts_with(&self.delimiter.0) {
                    return Err(QuoteError { field, message: "text after the closing quote" });
                }
                start = after + width;
                continue;
            }
            match self.delimiter.find(&line[start..]) {
                Some(d) => {
                    out.push(Field { start, end: start + d, escaped: false });
                    start += d + width;
                }
                None => {
                    out.push(Field { start, end: line.len(), escaped: false });
                    return Ok(());
                }
            }
        }
    }
}

/// Decodes field bytes: valid UTF-8 stays as is, every byte that is not
/// part of valid UTF-8 is read as Latin-1 (so `0xE9` becomes `é`).
pub(crate) fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(decode_mixed(bytes)),
    }
}

fn decode_mixed(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                // `valid` is valid UTF-8 by construction, so this never drops text.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                out.extend(rest[..bad].iter().map(|&b| char::from(b)));
                bytes = &rest[bad..];
            }
        }
    }
}

/// A field's bytes as quoted in an error message (decoded, shortened).
pub(crate) fn shown(bytes: &[u8]) -> String {
    let text = decode_text(bytes);
    let mut s: String = text.chars().take(40).collect();
    if text.chars().nth(40).is_some() {
        s.push('…');
    }
    format!("`{s}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(splitter: &Splitter, line: &str) -> Vec<String> {
        let mut out = Vec::new();
        splitter.split(line.as_bytes(), &mut out).unwrap();
        out.iter().map(|f| String::from_utf8(f.bytes(line.as_bytes()).into_owned()).unwrap()).collect()
    }

    #[test]
    fn find_byte_agrees_with_a_plain_scan() {
        let text: Vec<u8> = (0..200u32).map(|i| (i * 7 % 13) as u8 + b'a').collect();
        for needle in b'a'..=b'n' {
            for start in 0..20 {
                let h = &text[start..];
                assert_eq!(find_byte(h, needle), h.iter().position(|&c| c == needle), "{needle} {start}");
            }
        }
        // Bytes around 0x80 and 0x01 exercise the borrow false positives.
        let h = [0x81u8, 0x80, 0x01, 0x00, 0x02, 0x80, 0x01, 0xff, 0x00];
        for needle in [0x00u8, 0x01, 0x80, 0xff, 0x02] {
            assert_eq!(find_byte(&h, needle), h.iter().position(|&c| c == needle));
        }
    }

    #[test]
    fn split_on_byte_agrees_with_a_plain_split() {
        let mut out = Vec::new();
        let mut x: u64 = 7;
        for len in 0..40 {
            for _ in 0..20 {
                let line: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        [b',', b'a', 0x80, 0x01, 0xAC, b'-'][(x >> 60) as usize % 6]
                    })
                    .collect();
                split_on_byte(&line, b',', &mut out);
                let got: Vec<&[u8]> = out.iter().map(|f| &line[f.start..f.end]).collect();
                let expected: Vec<&[u8]> = line.split(|&c| c == b',').collect();
                assert_eq!(got, expected, "{line:?}");
                out.clear();
            }
        }
    }

    #[test]
    fn lines_drop_cr() {
        assert_eq!(next_line(b"a,b\r\nc"), (&b"a,b"[..], &b"c"[..]));
        assert_eq!(next_line(b"c"), (&b"c"[..], &b""[..]));
        assert_eq!(next_line(b"\r\n"), (&b""[..], &b""[..]));
    }

    #[test]
    fn splits_on_single_and_multi_byte_delimiters() {
        let tab = Splitter::new(Delimiter::new("\t").unwrap(), false);
        assert_eq!(fields(&tab, "1\t2\t\t3"), ["1", "2", "", "3"]);
        assert_eq!(fields(&tab, ""), [""]);
        let colons = Splitter::new(Delimiter::new("::").unwrap(), false);
        assert_eq!(
            fields(&colons, "1::Star Wars: A New Hope (1977)::Action|Sci-Fi"),
            ["1", "Star Wars: A New Hope (1977)", "Action|Sci-Fi"]
        );
        assert_eq!(fields(&colons, "1:::2"), ["1", ":2"]);
        assert_eq!(fields(&colons, "1::"), ["1", ""]);
    }

    #[test]
    fn quotes() {
        let csv = Splitter::new(Delimiter::new(",").unwrap(), true);
        assert_eq!(fields(&csv, r#"1,"Toy Story, The (1995)",x"#), ["1", "Toy Story, The (1995)", "x"]);
        assert_eq!(fields(&csv, r#""say ""hi""","""#), [r#"say "hi""#, ""]);
        assert_eq!(fields(&csv, r#"a"b,c"#), [r#"a"b"#, "c"]);
        let mut out = Vec::new();
        let e = csv.split(br#"1,"open"#, &mut out).unwrap_err();
        assert_eq!(e.field, 1);
        let e = csv.split(br#""a"b,c"#, &mut out).unwrap_err();
        assert_eq!((e.field, e.message), (0, "text after the closing quote"));
        let plain = Splitter::new(Delimiter::new(",").unwrap(), false);
        assert_eq!(fields(&plain, r#""a,b""#), [r#""a"#, r#"b""#]);
    }

    #[test]
    fn latin1_bytes_decode_per_byte() {
        assert_eq!(decode_text(b"Caf\xe9"), "Café");
        assert_eq!(decode_text("Café".as_bytes()), "Café");
        assert_eq!(decode_text(b"Mis\xe9rables \xc3\xa9 \xff"), "Misérables é ÿ");
        assert_eq!(decode_text(b"\xc3"), "Ã");
        assert!(matches!(decode_text(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn shown_values_are_short() {
        assert_eq!(shown(b"abc"), "`abc`");
        assert_eq!(shown(&[b'x'; 50]), format!("`{}…`", "x".repeat(40)));
    }
}
