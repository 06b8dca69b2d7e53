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
            (resolve(src, None, Some(next_line(&text).0))?, 0)
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

    fn no_data(&self) -> Error {
        let after = if self.layout.header { " after the header" } else { "" };
        Error::File { path: self.layout.path.clone(), message: format!("no data lines{after}") }
    }
}

enum ChunkError {
    Line(LineError),
    Other(Error),
}

/// Canonical batches of an interactions text file, streamed.
pub(crate) fn read_interactions(src: &Source, options: &ReadOptions) -> Result<Batches> {
    let reader = TextReader::open(src, options)?;
    Ok(Box::new(TextBatches { reader, chunk_bytes: options.chunk_bytes, pending: VecDeque::new(), rows: 0, done: false }))
}

/// A whole side table as one batch (side tables are small: parsed on one thread).
pub(crate) fn read_table(src: &Source, options: &ReadOptions) -> Result<RecordBatch> {
    let mut reader = TextReader::open(src, options)?;
    let mut columns = Columns::new(&reader.layout);
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
}

impl TextBatches {
    /// Parses a block's pieces in parallel; batches come back in file order.
    fn parse_block(&mut self, block: &[u8]) -> Result<()> {
        let layout = &*self.reader.layout;
        let parsed: Vec<Result<(Option<RecordBatch>, u64), ChunkError>> = cut_at_lines(block, self.chunk_bytes)
            .into_par_iter()
            .map(|piece| {
                let mut columns = Columns::new(layout);
                let lines = columns.parse(layout, piece).map_err(ChunkError::Line)?;
                let batch = if columns.rows() > 0 { Some(columns.finish(layout).map_err(ChunkError::Other)?) } else { None };
                Ok((batch, lines))
            })
            .collect();
        for result in parsed {
            match result {
                Ok((batch, lines)) => {
                    self.reader.line += lines;
                    if let Some(batch) = batch {
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
                    return None;
                }
                Some(block) => block.and_then(|b| self.parse_block(&b)),
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
