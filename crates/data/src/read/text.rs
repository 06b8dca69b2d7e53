//! The delimited-text driver shared by every text format: header and
//! layout, then blocks of lines parsed in parallel (rayon) into batches,
//! with exact 1-based line numbers in errors (the header is line 1).

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::RecordBatch;
use rayon::prelude::*;

use crate::read::blocks::{cut_at_lines, Blocks};
use crate::read::columns::{Columns, LineError};
use crate::read::fields::next_line;
use crate::read::layout::{has_header, resolve, TextLayout};
use crate::read::riiid::{Backwards, RiiidChecks};
use crate::read::ReadOptions;
use crate::recipe::Source;
use crate::table::Batches;
use crate::{Error, Result};

/// An open text source: its layout and the blocks still to parse.
struct TextReader {
    layout: Arc<TextLayout>,
    /// The first block, minus a byte-order mark and the header.
    first: Option<Vec<u8>>,
    blocks: Blocks,
    /// Lines consumed so far (the header counts).
    line: u64,
}

impl TextReader {
    fn open(src: &Source, options: &ReadOptions) -> Result<TextReader> {
        let mut blocks = Blocks::open(&src.path, options.block_bytes)?;
        let file_error = |message: &str| Error::File { path: src.path.clone(), message: message.to_owned() };
        let mut text = match blocks.next() {
            None => return Err(file_error("file is empty")),
            Some(block) => block?,
        };
        if text.starts_with(b"\xEF\xBB\xBF") {
            text.drain(..3);
        }
        let (layout, line) = if has_header(src) {
            let (header, rest) = next_line(&text);
            if header.is_empty() {
                return Err(file_error("line 1 is empty, expected a header"));
            }
            let layout = resolve(src, Some(header), None)?;
            let start = text.len() - rest.len();
            text.drain(..start);
            (layout, 1)
        } else {
            // Without a header, the first non-blank line shows how many fields there are.
            let mut rest = &text[..];
            let mut first = &rest[..0];
            while first.is_empty() && !rest.is_empty() {
                (first, rest) = next_line(rest);
            }
            (resolve(src, None, Some(first))?, 0)
        };
        Ok(TextReader { layout: Arc::new(layout), first: Some(text), blocks, line })
    }

    fn next_block(&mut self) -> Option<Result<Vec<u8>>> {
        match self.first.take() {
            Some(first) => Some(Ok(first)),
            None => self.blocks.next(),
        }
    }

    fn error_at(&self, e: LineError) -> Error {
        let line = self.line + e.line + 1;
        e.into_error(&self.layout, line)
    }

    /// The time-going-back error at absolute line `line`.
    fn backwards_at(&self, b: &Backwards, line: u64) -> Error {
        let field = self.layout.outputs.iter().find(|o| o.name == crate::table::col::TIME).map_or(0, |o| o.field);
        let e = LineError { line: 0, column: field + 1, message: b.message() };
        e.into_error(&self.layout, line)
    }

    fn no_data(&self) -> Error {
        let after = if self.layout.header { " after the header" } else { "" };
        Error::File { path: self.layout.path.clone(), message: format!("no data lines{after}") }
    }
}

enum ChunkError {
    Line(LineError),
    Other(Error),
}

/// Canonical batches of an interactions text file, streamed, with the
/// Riiid checks run on each batch in file order when given.
pub(crate) fn read_interactions(src: &Source, options: &ReadOptions, riiid: Option<RiiidChecks>) -> Result<Batches> {
    let reader = TextReader::open(src, options)?;
    Ok(Box::new(TextBatches {
        reader,
        chunk_bytes: options.chunk_bytes,
        pending: VecDeque::new(),
        rows: 0,
        done: false,
        riiid,
    }))
}

/// The 1-based line of the `row`-th (0-based) non-blank line of `piece`,
/// whose first line is line `first`.
fn line_of_row(piece: &[u8], row: usize, first: u64) -> u64 {
    let (mut rest, mut line, mut seen) = (piece, first, 0usize);
    while !rest.is_empty() {
        let (text, tail) = next_line(rest);
        if !text.is_empty() {
            if seen == row {
                return line;
            }
            seen += 1;
        }
        rest = tail;
        line += 1;
    }
    line
}

/// A whole side table as one batch (side tables are small: parsed on one thread).
pub(crate) fn read_table(src: &Source, options: &ReadOptions) -> Result<RecordBatch> {
    let mut reader = TextReader::open(src, options)?;
    let mut columns = Columns::with_capacity(&reader.layout, 0);
    while let Some(block) = reader.next_block() {
        let block = block?;
        match columns.parse(&reader.layout, &block) {
            Ok(lines) => reader.line += lines,
            Err(e) => return Err(reader.error_at(e)),
        }
    }
    if columns.rows() == 0 {
        return Err(reader.no_data());
    }
    columns.finish(&reader.layout)
}

struct TextBatches {
    reader: TextReader,
    chunk_bytes: usize,
    pending: VecDeque<RecordBatch>,
    rows: usize,
    done: bool,
    riiid: Option<RiiidChecks>,
}

impl TextBatches {
    /// Parses a block's pieces in parallel; batches come back in file order
    /// (and go through the Riiid checks in that order).
    fn parse_block(&mut self, block: &[u8]) -> Result<()> {
        let layout = &*self.reader.layout;
        let pieces = cut_at_lines(block, self.chunk_bytes);
        let parsed: Vec<Result<(Option<RecordBatch>, u64), ChunkError>> = pieces
            .par_iter()
            .map(|&piece| {
                let mut columns = Columns::for_text(layout, piece);
                let lines = columns.parse(layout, piece).map_err(ChunkError::Line)?;
                let batch =
                    if columns.rows() > 0 { Some(columns.finish(layout).map_err(ChunkError::Other)?) } else { None };
                Ok((batch, lines))
            })
            .collect();
        for (result, piece) in parsed.into_iter().zip(pieces) {
            match result {
                Ok((batch, lines)) => {
                    let first_line = self.reader.line + 1;
                    self.reader.line += lines;
                    if let Some(batch) = batch {
                        if let Some(checks) = &mut self.riiid {
                            match checks.check(&batch) {
                                Ok(None) => {}
                                Ok(Some(row)) => {
                                    checks.note_first(&format!(":{}", line_of_row(piece, row, first_line)))
                                }
                                Err(b) => {
                                    return Err(self.reader.backwards_at(&b, line_of_row(piece, b.row, first_line)))
                                }
                            }
                        }
                        self.rows += batch.num_rows();
                        self.pending.push_back(batch);
                    }
                }
                Err(ChunkError::Line(e)) => return Err(self.reader.error_at(e)),
                Err(ChunkError::Other(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Iterator for TextBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.done {
                return None;
            }
            let outcome = match self.reader.next_block() {
                None if self.rows == 0 => Err(self.reader.no_data()),
                None => {
                    self.done = true;
                    if let Some(checks) = &self.riiid {
                        checks.finish();
                    }
                    return None;
                }
                Some(block) => block.and_then(|b| {
                    let parsed = self.parse_block(&b);
                    self.reader.blocks.recycle(b);
                    parsed
                }),
            };
            if let Err(e) = outcome {
                // After an error the stream ends: a later batch would be misleading.
                self.done = true;
                self.pending.clear();
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::read::testing::ints;
    use crate::recipe::{ColumnRef, Format, Role, Table};

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let path = crate::io::scratch_dir("text").join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn source(format: Format, path: &Path) -> Source {
        Source::new(Table::Interactions, path, format)
    }

    fn all(src: &Source, options: &ReadOptions) -> Result<Vec<RecordBatch>> {
        crate::read::read_interactions_with(src, options)?.collect()
    }

    /// The first error reading `src`, whether at open or in the stream.
    fn error(src: &Source) -> Error {
        all(src, &ReadOptions::default()).expect_err("bad input must fail")
    }

    /// Asserts a parse error's place and that its message contains `needle`.
    fn assert_parse(e: Error, path: &Path, line: u64, column: usize, name: &str, needle: &str) {
        let shown = e.to_string();
        match e {
            Error::Parse { path: p, line: l, column: c, name: n, message } => {
                assert_eq!((p.as_path(), l, c, n.as_str()), (path, line, column, name), "{shown}");
                assert!(message.contains(needle), "{shown}");
            }
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn missing_column_names_the_column_and_the_header() {
        let path = write("clicks.tsv", b"SessionID\tItemId\tTime\n1\t2\t3\n");
        let e = error(&source(Format::Gru4rec, &path)).to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("column `SessionId` not found; the header has: `SessionID`, `ItemId`, `Time`"), "{e}");
    }

    #[test]
    fn wrong_delimiter_reports_one_field_of_four() {
        let path = write("ratings.dat", b"1\t1193\t5\t978300760\n");
        let e = error(&source(Format::MovielensDat, &path));
        assert_parse(e, &path, 1, 2, "movie_id", "found 1 field, expected 4 separated by `::`");
    }

    #[test]
    fn non_numeric_rating() {
        let path = write("ratings.dat", b"1::1193::5::978300760\n1::661::x::978302109\n");
        let e = error(&source(Format::MovielensDat, &path));
        assert_parse(e, &path, 2, 3, "rating", "expected a number, found `x`");
    }

    #[test]
    fn rating_outside_the_declared_range() {
        let path = write("ratings.dat", b"1::1193::5::978300760\n1::661::6::978302109\n");
        let mut src = source(Format::MovielensDat, &path);
        assert!(all(&src, &ReadOptions::default()).is_ok(), "no range declared: any finite rating is read");
        src.rating_range = Some([1.0, 5.0]);
        let e = error(&src);
        assert_parse(e, &path, 2, 3, "rating", "rating 6 is outside the declared rating_range [1, 5]");
    }

    #[test]
    fn malformed_genres_are_errors() {
        for (bad, what) in [("Comedy||Drama", "empty value"), ("|Comedy", "empty value"), ("Comedy|", "ends with")] {
            let path =
                write("movies.dat", format!("1::Toy Story (1995)::Animation\n2::Heat (1995)::{bad}\n").as_bytes());
            let src = Source::new(Table::Items, &path, Format::MovielensDat);
            let e = read_table(&src, &ReadOptions::default()).unwrap_err();
            assert_parse(e, &path, 2, 3, "genres", what);
        }
        // No genres at all is an empty list, not an error.
        let path = write("movies.dat", b"1::Toy Story (1995)::\n");
        let src = Source::new(Table::Items, &path, Format::MovielensDat);
        assert!(read_table(&src, &ReadOptions::default()).is_ok());
    }

    #[test]
    fn nan_and_infinity_are_rejected() {
        for bad in ["NaN", "inf", "-Infinity"] {
            let path = write("ratings.dat", format!("1::1193::{bad}::978300760\n").as_bytes());
            let e = error(&source(Format::MovielensDat, &path));
            assert_parse(e, &path, 1, 3, "rating", &format!("expected a finite number, found `{bad}`"));
        }
        let path = write("clicks.tsv", b"SessionId\tItemId\tTime\n1\t2\tnan\n");
        assert_parse(
            error(&source(Format::Gru4rec, &path)),
            &path,
            2,
            3,
            "Time",
            "expected a time in seconds, found `nan`",
        );
    }

    #[test]
    fn bad_timestamp() {
        let path = write("clicks.dat", b"1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07 10h51,214536500,0\n");
        let e = error(&source(Format::Rsc15, &path));
        assert_parse(e, &path, 2, 2, "timestamp", "expected an ISO-8601 time");
    }

    #[test]
    fn truncated_last_line() {
        let path = write("ratings.dat", b"1::1193::5::978300760\n1::661::3");
        let e = error(&source(Format::MovielensDat, &path));
        assert_parse(e, &path, 2, 4, "timestamp", "found 3 fields, expected 4");
    }

    #[test]
    fn extra_fields_are_an_error_too() {
        let path = write("u.data", b"196\t242\t3\t881250949\t7\n");
        let e = error(&source(Format::Movielens100k, &path));
        assert_parse(e, &path, 1, 5, "(extra field)", "found 5 fields, expected 4");
    }

    #[test]
    fn empty_files() {
        let path = write("empty.csv", b"");
        assert!(error(&source(Format::Riiid, &path)).to_string().contains("file is empty"));
        let path = write("header.tsv", b"SessionId\tItemId\tTime\r\n");
        assert!(error(&source(Format::Gru4rec, &path)).to_string().contains("no data lines after the header"));
        let path = write("blank.dat", b"\n\r\n");
        assert!(error(&source(Format::Rsc15, &path)).to_string().contains("no data lines"));
    }

    #[test]
    fn text_user_id_where_int_is_expected() {
        let path = write("ratings.dat", b"1::1193::5::978300760\nu2::661::3::978302109\n");
        let mut src = source(Format::MovielensDat, &path);
        assert_parse(
            error(&src),
            &path,
            2,
            1,
            "user_id",
            "expected an integer key, found `u2` (set `seq_type = \"str\"`",
        );
        src.seq_type = Some(crate::recipe::KeyType::Str);
        let b = all(&src, &ReadOptions::default()).unwrap();
        assert_eq!(crate::read::testing::strs(&b, "seq"), [Some("1".to_owned()), Some("u2".to_owned())]);
    }

    #[test]
    fn riiid_values_out_of_range() {
        let header = "row_id,timestamp,user_id,content_id,content_type_id,task_container_id,user_answer,answered_correctly,prior_question_elapsed_time,prior_question_had_explanation\n";
        let cases = [
            (
                "0,0,115,5692,2,1,3,1,,\n",
                5,
                "content_type_id",
                "expected 0 (question or item) or 1 (lecture), found `2`",
            ),
            ("0,0,115,5692,0,1,3,5,,\n", 8, "answered_correctly", "expected 1, 0 or -1, found `5`"),
            ("0,0,115,5692,0,1,3,1,,maybe\n", 10, "prior_question_had_explanation", "expected True, False or nothing"),
            (
                "0,0,115,5692,0,1,3,1,inf,True\n",
                9,
                "prior_question_elapsed_time",
                "expected a finite number, found `inf`",
            ),
            ("0,,115,5692,0,1,3,1,,\n", 2, "timestamp", "empty field, expected a time in milliseconds"),
        ];
        for (line, column, name, needle) in cases {
            let path = write("train.csv", format!("{header}{line}").as_bytes());
            assert_parse(error(&source(Format::Riiid, &path)), &path, 2, column, name, needle);
        }
    }

    #[test]
    fn unterminated_quote() {
        let path = write("events.csv", b"u,i,t\n1,\"open,3\n");
        let mut src = source(Format::Csv, &path);
        for (role, name) in [(Role::Seq, "u"), (Role::Item, "i"), (Role::Time, "t")] {
            src.columns.insert(role, ColumnRef::Name(name.into()));
        }
        assert_parse(error(&src), &path, 2, 2, "i", "quoted field has no closing quote");
    }

    /// Lines are numbered exactly whatever the block and piece sizes, blank
    /// lines and CRLF included, and batches come out in file order.
    #[test]
    fn line_numbers_are_exact_across_blocks_and_pieces() {
        let mut text = String::from("SessionId\tItemId\tTime\r\n");
        for i in 0..1000 {
            if i % 97 == 0 {
                text.push_str("\r\n");
            }
            text.push_str(&format!("{}\t{}\t{}\r\n", i / 10, i, 1000 + i));
        }
        let good = write("clicks.tsv", text.as_bytes());
        let src = source(Format::Gru4rec, &good);
        for options in [
            ReadOptions::default(),
            ReadOptions { block_bytes: 64, chunk_bytes: 16, ..Default::default() },
            ReadOptions { block_bytes: 1000, chunk_bytes: 100, ..Default::default() },
        ] {
            let b = all(&src, &options).unwrap();
            assert_eq!(ints(&b, "item"), (0..1000).collect::<Vec<i64>>(), "{options:?}");
            assert_eq!(ints(&b, "time"), (0..1000).map(|i| (1000 + i) * 1000).collect::<Vec<i64>>());
        }
        // Break item 776: before its line come the header, items 0..776 and
        // 9 blank lines (before items 0, 97, ..., 776), so it is line 787.
        let lines: Vec<&str> = text.split("\r\n").collect();
        let target = lines.iter().position(|l| l.starts_with("77\t776\t")).unwrap();
        assert_eq!(target + 1, 787);
        let broken = text.replace("77\t776\t1776", "77\t776\t17x6");
        let bad = write("clicks.tsv", broken.as_bytes());
        for (block_bytes, chunk_bytes) in [(32 << 20, 1 << 20), (64, 16), (333, 50)] {
            let options = ReadOptions { block_bytes, chunk_bytes, ..Default::default() };
            let e = all(&source(Format::Gru4rec, &bad), &options).unwrap_err();
            assert_parse(e, &bad, target as u64 + 1, 3, "Time", "found `17x6`");
        }
    }

    #[test]
    fn headerless_field_count_comes_from_the_first_non_blank_line() {
        let path = write("e.csv", b"\n\r\n1,2,3\n4,5\n");
        let mut src = source(Format::Csv, &path);
        src.header = Some(false);
        for (role, i) in [(Role::Seq, 0), (Role::Item, 1), (Role::Time, 2)] {
            src.columns.insert(role, ColumnRef::Index(i));
        }
        assert_parse(error(&src), &path, 4, 3, "2", "found 2 fields, expected 3");
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let path = write("clicks.tsv", b"\xEF\xBB\xBFSessionId\tItemId\tTime\n1\t2\t3\n");
        let b = all(&source(Format::Gru4rec, &path), &ReadOptions::default()).unwrap();
        assert_eq!(ints(&b, "time"), [3000]);
    }

    fn riiid_checks(rel: &str) -> Source {
        source(Format::Riiid, &crate::read::testing::fixture(&format!("riiid-checks/{rel}")))
    }

    fn tiny_pieces() -> [ReadOptions; 3] {
        [
            ReadOptions::default(),
            ReadOptions { block_bytes: 64, chunk_bytes: 16, ..Default::default() },
            ReadOptions { block_bytes: 200, chunk_bytes: 70, ..Default::default() },
        ]
    }

    /// User 115 goes from 56943 (line 6) back to 50000 on line 8, with a row
    /// of user 2746 between; line 7 is earlier than line 6 but belongs to
    /// another user, which is fine.
    #[test]
    fn riiid_time_going_back_within_a_user_names_line_user_and_both_times() {
        let src = riiid_checks("train_time_backwards.csv");
        for options in tiny_pieces() {
            let e = all(&src, &options).unwrap_err();
            let shown = e.to_string();
            assert_parse(
                e,
                &src.path,
                8,
                2,
                "timestamp",
                "user 115: timestamp 50000 is before the user's previous timestamp 56943",
            );
            assert!(shown.starts_with(&format!("{}:8:2: column `timestamp`: user 115", src.path.display())), "{shown}");
        }
        // Blank lines shift the line numbers; the check still names the right line.
        let text = std::fs::read_to_string(&src.path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(3, "");
        lines.insert(1, "");
        let path = write("train.csv", lines.join("\r\n").as_bytes());
        for options in tiny_pieces() {
            let e = all(&source(Format::Riiid, &path), &options).unwrap_err();
            assert_parse(e, &path, 10, 2, "timestamp", "user 115: timestamp 50000 is before");
        }
        // Other formats are sorted by time later, legitimately.
        let mut csv = source(Format::Csv, &src.path);
        for (role, name) in [(Role::Seq, "user_id"), (Role::Item, "content_id"), (Role::Time, "timestamp")] {
            csv.columns.insert(role, ColumnRef::Name(name.into()));
        }
        assert_eq!(ints(&all(&csv, &ReadOptions::default()).unwrap(), "time")[6], 50000 * 1000);
    }

    #[test]
    fn riiid_time_going_back_with_text_user_keys() {
        let header = "row_id,timestamp,user_id,content_id,content_type_id,task_container_id,user_answer,answered_correctly,prior_question_elapsed_time,prior_question_had_explanation\n";
        let rows = "0,10,a,1,0,0,0,1,,\n1,5,b,1,0,0,0,1,,\n2,11,a,2,0,1,0,1,1.0,False\n3,4,b,2,0,1,0,1,1.0,False\n";
        let path = write("train.csv", format!("{header}{rows}").as_bytes());
        let mut src = source(Format::Riiid, &path);
        src.seq_type = Some(crate::recipe::KeyType::Str);
        assert_parse(
            error(&src),
            &path,
            5,
            2,
            "timestamp",
            "user b: timestamp 4 is before the user's previous timestamp 5",
        );
    }

    /// Lines 6 and 10 are questions past their learner's first bundle with
    /// an empty elapsed time; lines 2, 3 (user 115's first bundle), 5 (user
    /// 2746's first question bundle, after a lecture) and the lectures are not.
    #[test]
    fn riiid_unexpected_empty_elapsed_times_are_counted_not_refused() {
        let src = riiid_checks("train.csv");
        for options in tiny_pieces() {
            let (batches, report) = crate::read::read_interactions_reporting(&src, &options).unwrap();
            let b: Vec<RecordBatch> = batches.collect::<Result<_>>().unwrap();
            let elapsed = crate::read::testing::floats(&b, "elapsed");
            assert_eq!((elapsed[4], elapsed[8]), (None, None));
            let r = report.riiid().unwrap();
            assert_eq!(r.elapsed_missing_unexpected, 2, "{options:?}");
            assert_eq!(r.elapsed_missing_unexpected_first, Some(format!("{}:6", src.path.display())));
            assert_eq!(r.questions_without_tags, None);
        }
        // Riiid's own pattern: empty only on first bundles and lectures.
        let plain = source(Format::Riiid, &crate::read::testing::fixture("riiid/train.csv"));
        let (batches, report) = crate::read::read_interactions_reporting(&plain, &ReadOptions::default()).unwrap();
        assert_eq!(batches.count(), 1);
        assert_eq!(report.riiid(), Some(crate::read::RiiidReport::default()));
        // Other formats have no Riiid report.
        let gru = write("clicks.tsv", b"SessionId\tItemId\tTime\n1\t2\t3\n");
        let (_, report) =
            crate::read::read_interactions_reporting(&source(Format::Gru4rec, &gru), &ReadOptions::default()).unwrap();
        assert_eq!(report.riiid(), None);
    }

    #[test]
    fn side_table_errors_have_line_numbers() {
        let path =
            write("questions.csv", b"question_id,bundle_id,correct_answer,part,tags\n0,0,0,1,51 131\nq1,1,1,1,\n");
        let src = Source::new(Table::Questions, &path, Format::Riiid);
        let e = read_table(&src, &ReadOptions::default()).unwrap_err();
        assert_parse(e, &path, 3, 1, "question_id", "expected an integer key, found `q1`");
    }
}
