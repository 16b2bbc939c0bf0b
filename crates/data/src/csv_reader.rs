//! A streaming RFC 4180 record reader that knows which line every record starts on.
//!
//! The `csv` crate reads an unterminated quote silently to the end of the file and reports no
//! line numbers for field-level problems; Sentiment140 users need both ("line 51,203: unterminated
//! quoted field"), and a way to skip one malformed line and carry on with the next. Hence this small
//! reader: quoted fields may hold commas, doubled quotes and newlines; `\r\n` endings are accepted.

use std::collections::VecDeque;
use std::io::{self, BufRead};

/// Why a record could not be parsed as CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// A quoted field was still open at the end of the file.
    UnterminatedQuote,
    /// A closing quote was followed by something other than a comma or the end of the record.
    TextAfterClosingQuote,
}

/// One parsed record: its fields as raw bytes and the 1-based line it starts on.
#[derive(Debug, Default)]
pub struct Record {
    /// 1-based physical line number of the record's first byte.
    pub line: u64,
    fields: Vec<Vec<u8>>,
    len: usize,
}

impl Record {
    /// Number of fields in the record.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the record has no field (never produced by the reader).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bytes of field `index`, quotes removed and `""` unescaped.
    pub fn field(&self, index: usize) -> &[u8] {
        &self.fields[index]
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn push_field(&mut self) -> &mut Vec<u8> {
        if self.len == self.fields.len() {
            self.fields.push(Vec::new());
        }
        let field = &mut self.fields[self.len];
        field.clear();
        self.len += 1;
        field
    }
}

/// What [`RecordReader::read_record`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A well-formed record was stored in the caller's [`Record`].
    Record,
    /// The record starting at `line` is malformed. The reader has already skipped its first
    /// physical line, so the next call resumes right after it.
    Malformed {
        /// 1-based line the malformed record starts on.
        line: u64,
        /// What is wrong with it.
        error: SyntaxError,
    },
    /// The input is exhausted.
    End,
}

/// Reads CSV records one at a time from any [`BufRead`], counting lines.
pub struct RecordReader<R> {
    input: R,
    /// Lines read ahead while looking for the end of a multi-line field that turned out to be
    /// malformed; they are parsed again on their own.
    pushed_back: VecDeque<(u64, Vec<u8>)>,
    next_line: u64,
    pending: Vec<u8>,
    blank_lines: u64,
    bytes_read: u64,
}

enum Parse {
    Complete,
    NeedMore,
    Error(SyntaxError),
}

impl<R: BufRead> RecordReader<R> {
    /// Wraps `input`; line numbers start at 1.
    pub fn new(input: R) -> Self {
        Self {
            input,
            pushed_back: VecDeque::new(),
            next_line: 1,
            pending: Vec::with_capacity(512),
            blank_lines: 0,
            bytes_read: 0,
        }
    }

    /// Empty lines skipped so far (they hold no record; they are counted, not dropped silently).
    pub fn blank_lines(&self) -> u64 {
        self.blank_lines
    }

    /// Bytes consumed from the underlying reader so far (for progress reporting).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads one physical line (terminator included) into `buf`; returns its number, or `None`.
    fn next_physical_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
        if let Some((line, bytes)) = self.pushed_back.pop_front() {
            buf.extend_from_slice(&bytes);
            return Ok(Some(line));
        }
        let n = self.input.read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        let line = self.next_line;
        self.next_line += 1;
        Ok(Some(line))
    }

    /// Reads the next record into `record`.
    pub fn read_record(&mut self, record: &mut Record) -> io::Result<ReadOutcome> {
        let mut pending = std::mem::take(&mut self.pending);
        let outcome = self.read_record_into(record, &mut pending);
        self.pending = pending;
        outcome
    }

    fn read_record_into(
        &mut self,
        record: &mut Record,
        pending: &mut Vec<u8>,
    ) -> io::Result<ReadOutcome> {
        // Skip blank lines; find the first line of the record.
        let first_line = loop {
            pending.clear();
            match self.next_physical_line(pending)? {
                None => return Ok(ReadOutcome::End),
                Some(line) => {
                    if trim_line_end(pending).is_empty() {
                        self.blank_lines += 1;
                        continue;
                    }
                    break line;
                }
            }
        };
        // Line boundaries inside `pending`, to push back all but the first on error.
        let mut extra_lines: Vec<(u64, usize)> = Vec::new();
        loop {
            match parse_record(pending, record) {
                Parse::Complete => {
                    record.line = first_line;
                    return Ok(ReadOutcome::Record);
                }
                Parse::Error(error) => {
                    self.push_back_extra(pending, &extra_lines);
                    return Ok(ReadOutcome::Malformed {
                        line: first_line,
                        error,
                    });
                }
                Parse::NeedMore => {
                    let start = pending.len();
                    match self.next_physical_line(pending)? {
                        Some(line) => extra_lines.push((line, start)),
                        None => {
                            self.push_back_extra(pending, &extra_lines);
                            return Ok(ReadOutcome::Malformed {
                                line: first_line,
                                error: SyntaxError::UnterminatedQuote,
                            });
                        }
                    }
                }
            }
        }
    }

    fn push_back_extra(&mut self, pending: &[u8], extra_lines: &[(u64, usize)]) {
        for (i, &(line, start)) in extra_lines.iter().enumerate().rev() {
            let end = extra_lines.get(i + 1).map_or(pending.len(), |&(_, s)| s);
            self.pushed_back
                .push_front((line, pending[start..end].to_vec()));
        }
    }
}

fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// Parses `bytes` (one or more physical lines) as one record.
fn parse_record(bytes: &[u8], record: &mut Record) -> Parse {
    let bytes = if bytes.ends_with(b"\n") {
        &bytes[..bytes.len() - 1]
    } else {
        bytes
    };
    record.clear();
    let mut i = 0;
    loop {
        let field = record.push_field();
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match memchr_quote(&bytes[i..]) {
                    None => return Parse::NeedMore,
                    Some(offset) => {
                        field.extend_from_slice(&bytes[i..i + offset]);
                        i += offset + 1;
                        if bytes.get(i) == Some(&b'"') {
                            field.push(b'"');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            match bytes.get(i) {
                None => return Parse::Complete,
                Some(b',') => i += 1,
                Some(b'\r') if i + 1 == bytes.len() => return Parse::Complete,
                Some(_) => return Parse::Error(SyntaxError::TextAfterClosingQuote),
            }
        } else {
            let rest = &bytes[i..];
            match rest.iter().position(|&b| b == b',') {
                Some(offset) => {
                    field.extend_from_slice(&rest[..offset]);
                    i += offset + 1;
                }
                None => {
                    field.extend_from_slice(rest.strip_suffix(b"\r").unwrap_or(rest));
                    return Parse::Complete;
                }
            }
        }
    }
}

fn memchr_quote(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'"')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed record (line, fields) or a malformed one (line, error).
    type Parsed = Result<(u64, Vec<String>), (u64, SyntaxError)>;

    fn read_all(input: &str) -> Vec<Parsed> {
        let mut reader = RecordReader::new(input.as_bytes());
        let mut record = Record::default();
        let mut out = Vec::new();
        loop {
            match reader.read_record(&mut record).unwrap() {
                ReadOutcome::End => return out,
                ReadOutcome::Record => out.push(Ok((
                    record.line,
                    (0..record.len())
                        .map(|i| String::from_utf8(record.field(i).to_vec()).unwrap())
                        .collect(),
                ))),
                ReadOutcome::Malformed { line, error } => out.push(Err((line, error))),
            }
        }
    }

    fn ok(line: u64, fields: &[&str]) -> Parsed {
        Ok((line, fields.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn quoted_fields_with_commas_quotes_and_newlines() {
        let input = "a,\"b, c\",\"say \"\"hi\"\"\"\r\n\"multi\nline\",x,\n\nlast,,\"\"";
        assert_eq!(
            read_all(input),
            vec![
                ok(1, &["a", "b, c", "say \"hi\""]),
                ok(2, &["multi\nline", "x", ""]),
                ok(5, &["last", "", ""]),
            ]
        );
    }

    #[test]
    fn unterminated_quote_skips_only_its_first_line() {
        let input = "\"0\",\"oops\n\"4\",\"fine\"\n";
        // The open quote swallows line 2's first quote, then finds `4` after a closing quote.
        assert_eq!(
            read_all(input),
            vec![
                Err((1, SyntaxError::TextAfterClosingQuote)),
                ok(2, &["4", "fine"]),
            ]
        );
        let input = "\"4\",\"fine\"\n\"0\",\"never closed\nmore text\n";
        assert_eq!(
            read_all(input),
            vec![
                ok(1, &["4", "fine"]),
                Err((2, SyntaxError::UnterminatedQuote)),
                ok(3, &["more text"]),
            ]
        );
    }

    #[test]
    fn counts_blank_lines_and_bytes() {
        let input = "a\n\n\r\nb\n";
        let mut reader = RecordReader::new(input.as_bytes());
        let mut record = Record::default();
        while reader.read_record(&mut record).unwrap() != ReadOutcome::End {}
        assert_eq!(reader.blank_lines(), 2);
        assert_eq!(reader.bytes_read(), input.len() as u64);
    }
}
