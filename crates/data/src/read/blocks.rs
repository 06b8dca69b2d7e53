//! Reading a text file as blocks of whole lines, one block ahead on a
//! background thread, so that parsing one block overlaps reading the next
//! and memory stays at a few blocks whatever the file size. Parsed blocks
//! come back to the reader for reuse: fresh 32 MiB buffers would cost a page
//! fault per 4 KiB.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};

use crate::{Error, Result};

/// Blocks of whole lines of a file, in order. The last block may end
/// without a newline (a file whose last line has none).
#[derive(Debug)]
pub(crate) struct Blocks {
    path: PathBuf,
    blocks: Receiver<std::io::Result<Vec<u8>>>,
    spare: Sender<Vec<u8>>,
}

impl Blocks {
    /// Opens `path` and starts reading blocks of about `block_bytes` (a
    /// block grows past that only to finish a longer line).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened.
    pub(crate) fn open(path: &Path, block_bytes: usize) -> Result<Blocks> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let block_bytes = block_bytes.max(1);
        // One block in the channel plus one being filled: the reader is
        // never more than two blocks ahead of the parser.
        let (tx, rx) = sync_channel(1);
        let (spare, spares) = channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("seqrec-read".into())
            .spawn(move || {
                let mut file = file;
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    let mut block = spares.try_recv().unwrap_or_default();
                    block.clear();
                    block.extend_from_slice(&carry);
                    let eof = loop {
                        // Grow by at least 64 KiB so that a line longer than a block is not read in tiny steps.
                        let want = block_bytes.saturating_sub(block.len()).max(block_bytes.min(1 << 16));
                        match file.by_ref().take(want as u64).read_to_end(&mut block) {
                            Ok(0) => break true,
                            Ok(_) if block.len() >= block_bytes && block.contains(&b'\n') => break false,
                            Ok(_) => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    };
                    if !eof {
                        // Cut after the last newline; the partial line starts the next block.
                        let cut = block.iter().rposition(|&c| c == b'\n').map_or(block.len(), |p| p + 1);
                        carry.clear();
                        carry.extend_from_slice(&block[cut..]);
                        block.truncate(cut);
                    }
                    if !block.is_empty() && tx.send(Ok(block)).is_err() {
                        return; // the reader was dropped
                    }
                    if eof {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io(path, e))?;
        Ok(Blocks { path: path.to_path_buf(), blocks: rx, spare })
    }

    /// Hands a parsed block back so that its buffer is reused.
    pub(crate) fn recycle(&self, block: Vec<u8>) {
        // The reader may have finished; then the buffer is simply freed.
        let _ = self.spare.send(block);
    }
}

impl Iterator for Blocks {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        // A closed channel means the thread finished: end of file.
        let block = self.blocks.recv().ok()?;
        Some(block.map_err(|e| Error::io(&self.path, e)))
    }
}

/// Cuts `text` into pieces of about `target` bytes, each ending just after
/// a newline (the last piece ends where `text` does).
pub(crate) fn cut_at_lines(text: &[u8], target: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(text.len() / target.max(1) + 1);
    let mut rest = text;
    while rest.len() > target {
        match rest[target..].iter().position(|&c| c == b'\n') {
            Some(p) => {
                let (piece, tail) = rest.split_at(target + p + 1);
                pieces.push(piece);
                rest = tail;
            }
            None => break,
        }
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_of(content: &[u8], block_bytes: usize) -> Vec<Vec<u8>> {
        let dir = crate::io::scratch_dir("blocks");
        let path = dir.join("f.txt");
        std::fs::write(&path, content).unwrap();
        Blocks::open(&path, block_bytes).unwrap().map(|b| b.unwrap()).collect()
    }

    #[test]
    fn blocks_hold_whole_lines_and_cover_the_file() {
        let content: Vec<u8> = (0..5000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        for block_bytes in [1, 7, 100, 65_536, 1 << 20] {
            let blocks = blocks_of(&content, block_bytes);
            assert_eq!(blocks.concat(), content, "block_bytes {block_bytes}");
            assert!(blocks.iter().all(|b| b.ends_with(b"\n")));
        }
        let unterminated = b"a\nbb\nccc";
        let blocks = blocks_of(unterminated, 1);
        assert_eq!(blocks.concat(), unterminated);
        assert!(blocks_of(b"", 10).is_empty());
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let e = Blocks::open(Path::new("/nonexistent/seqrec.csv"), 10).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/seqrec.csv"), "{e}");
    }

    #[test]
    fn pieces_end_at_newlines() {
        let text = b"aa\nbbbb\nc\ndddddd\ne";
        let pieces = cut_at_lines(text, 3);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces, [&b"aa\nbbbb\n"[..], b"c\ndddddd\n", b"e"]);
        assert_eq!(cut_at_lines(b"", 3).len(), 0);
        assert_eq!(cut_at_lines(text, 1000), [&text[..]]);
    }
}
