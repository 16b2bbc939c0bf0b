//! A streaming RFC 4180 record reader that knows which line every record starts on.
//!
//! The `csv` crate reads an unterminated quote silently to the end of the file and reports no
//! line numbers for field-level problems; Sentiment140 users need both ("line 51,203: unterminated
//! quoted field"), and a way to skip one malformed line and carry on with the next. Hence this small
//! reader: quoted fields may hold commas, doubled quotes and newlines; `\r\n` endings are accepted.
//!
//! A record that needs more lines is parsed on from where it stopped, never from its first byte
//! again, and a quoted field may span at most [`MAX_RECORD_LINES`] lines: a stray quote in a
//! cleaned file costs a bounded look-ahead, not a parse of the rest of the file as one growing
//! record, again and again.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

/// Lines one record may span: a quoted field still open after this many is reported as
/// unterminated at the line where it opened (a tweet is one line; a cleaned file's texts
/// rarely hold more than a few newlines).
pub const MAX_RECORD_LINES: usize = 1000;

/// Bytes one record may hold unless the caller says otherwise: a tweet is at most a few
/// hundred; a line of megabytes (a file that is not CSV, a missing newline, a crafted input)
/// is reported as too long at its line, without being held in memory.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Why a record could not be parsed as CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// A quoted field was still open at the end of the file, or after [`MAX_RECORD_LINES`].
    UnterminatedQuote,
    /// A closing quote was followed by something other than a comma or the end of the record.
    TextAfterClosingQuote,
    /// The record holds more bytes than the reader's limit
    /// ([`RecordReader::with_max_record_bytes`]).
    RecordTooLong,
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

    fn last_field(&mut self) -> &mut Vec<u8> {
        &mut self.fields[self.len - 1]
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
    /// malformed; they are parsed again on their own (with whether the line was cut short).
    pushed_back: VecDeque<(u64, Vec<u8>, bool)>,
    next_line: u64,
    max_record_bytes: usize,
    pending: Vec<u8>,
    blank_lines: u64,
    bytes_read: u64,
}

enum Parse {
    Complete,
    /// The last field is a quoted one still open: parsing resumes at this offset once more
    /// lines are appended.
    NeedMore(usize),
    Error(SyntaxError),
}

impl<R: BufRead> RecordReader<R> {
    /// Wraps `input`; line numbers start at 1.
    pub fn new(input: R) -> Self {
        Self {
            input,
            pushed_back: VecDeque::new(),
            next_line: 1,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
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

    /// Sets the most bytes a record may hold (at least 1): a longer one is reported as
    /// [`SyntaxError::RecordTooLong`] at its first line, and at most this many bytes (and one
    /// line more) of it are ever held.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes.max(1);
        self
    }

    /// Reads one physical line (terminator included) into `buf`, at most the record limit's
    /// bytes of it; returns its number and whether it was longer (its rest is skipped), or
    /// `None` at the end.
    fn next_physical_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<(u64, bool)>> {
        if let Some((line, bytes, too_long)) = self.pushed_back.pop_front() {
            buf.extend_from_slice(&bytes);
            return Ok(Some((line, too_long)));
        }
        let limit = self.max_record_bytes as u64 + 1;
        let n = (&mut self.input).take(limit).read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        let too_long = n as u64 == limit && !buf.ends_with(b"\n");
        if too_long {
            // The rest of the line is read and dropped, never held.
            loop {
                let chunk = self.input.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                self.input.consume(used);
                self.bytes_read += used as u64;
                if done {
                    break;
                }
            }
        }
        let line = self.next_line;
        self.next_line += 1;
        Ok(Some((line, too_long)))
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
                Some((line, true)) => {
                    pending.clear();
                    return Ok(ReadOutcome::Malformed {
                        line,
                        error: SyntaxError::RecordTooLong,
                    });
                }
                Some((line, false)) => {
                    if trim_line_end(pending).is_empty() {
                        self.blank_lines += 1;
                        continue;
                    }
                    break line;
                }
            }
        };
        // Line boundaries inside `pending` (and whether each was cut short), to push back all
        // but the first on error.
        let mut extra_lines: Vec<(u64, usize, bool)> = Vec::new();
        let mut resume = None;
        loop {
            match parse_record(pending, record, resume) {
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
                Parse::NeedMore(at) => {
                    resume = Some(at);
                    let start = pending.len();
                    let next = if extra_lines.len() + 1 >= MAX_RECORD_LINES {
                        None
                    } else {
                        self.next_physical_line(pending)?
                    };
                    match next {
                        Some((line, too_long)) => {
                            extra_lines.push((line, start, too_long));
                            // The open field has grown past the limit: the record is too
                            // long; its later lines are parsed again on their own.
                            if too_long || pending.len() > self.max_record_bytes {
                                self.push_back_extra(pending, &extra_lines);
                                return Ok(ReadOutcome::Malformed {
                                    line: first_line,
                                    error: SyntaxError::RecordTooLong,
                                });
                            }
                        }
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

    fn push_back_extra(&mut self, pending: &[u8], extra_lines: &[(u64, usize, bool)]) {
        for (i, &(line, start, too_long)) in extra_lines.iter().enumerate().rev() {
            let end = extra_lines.get(i + 1).map_or(pending.len(), |&(_, s, _)| s);
            self.pushed_back
                .push_front((line, pending[start..end].to_vec(), too_long));
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

/// Parses `bytes` (one or more physical lines) as one record; with `resume`, continues the
/// open quoted field that an earlier call on a prefix of `bytes` stopped in, at that offset.
fn parse_record(bytes: &[u8], record: &mut Record, resume: Option<usize>) -> Parse {
    let bytes = if bytes.ends_with(b"\n") {
        &bytes[..bytes.len() - 1]
    } else {
        bytes
    };
    let (mut i, mut open_quote) = match resume {
        Some(at) => (at, true),
        None => {
            record.clear();
            (0, false)
        }
    };
    loop {
        let quoted = if open_quote {
            open_quote = false;
            true
        } else {
            record.push_field();
            let quoted = bytes.get(i) == Some(&b'"');
            i += usize::from(quoted);
            quoted
        };
        let field = record.last_field();
        if quoted {
            loop {
                match memchr_quote(&bytes[i..]) {
                    None => return Parse::NeedMore(i),
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
        read_all_within(input, DEFAULT_MAX_RECORD_BYTES)
    }

    fn read_all_within(input: &str, max_record_bytes: usize) -> Vec<Parsed> {
        let mut reader =
            RecordReader::new(input.as_bytes()).with_max_record_bytes(max_record_bytes);
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
    fn records_past_the_byte_limit_are_named_by_line_and_skipped_whole() {
        let long = "x".repeat(100);
        let input = format!("a,b\n1,{long}\n2,c\n3,\"{long}\n4,d\"\n5,e\n");
        assert_eq!(
            read_all_within(&input, 64),
            vec![
                ok(1, &["a", "b"]),
                Err((2, SyntaxError::RecordTooLong)),
                ok(3, &["2", "c"]),
                // A quoted field that grows past the limit over lines: its first line is
                // named, and the lines after it are read again on their own.
                Err((4, SyntaxError::RecordTooLong)),
                ok(5, &["4", "d\""]),
                ok(6, &["5", "e"]),
            ]
        );
        // A line of a megabyte with a small limit: never held whole, and the reader goes on.
        let huge = format!("1,{}\n2,ok\n", "y".repeat(1 << 20));
        let mut reader = RecordReader::new(huge.as_bytes()).with_max_record_bytes(16);
        let mut record = Record::default();
        assert_eq!(
            reader.read_record(&mut record).unwrap(),
            ReadOutcome::Malformed {
                line: 1,
                error: SyntaxError::RecordTooLong
            }
        );
        assert!(
            reader.pending.capacity() < 1024,
            "{}",
            reader.pending.capacity()
        );
        assert_eq!(
            reader.read_record(&mut record).unwrap(),
            ReadOutcome::Record
        );
        assert_eq!((record.line, record.field(1)), (2, &b"ok"[..]));
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

    #[test]
    fn a_quote_that_never_closes_is_bounded_and_named_at_its_line() {
        // A stray quote on line 2 of a long file: reported there after MAX_RECORD_LINES, and
        // every later line is read as its own record.
        let mut input = String::from("a,b\n\"stray,x\n");
        for i in 0..2 * MAX_RECORD_LINES {
            input.push_str(&format!("{i},t\n"));
        }
        let parsed = read_all(&input);
        assert_eq!(parsed[0], ok(1, &["a", "b"]));
        assert_eq!(parsed[1], Err((2, SyntaxError::UnterminatedQuote)));
        assert_eq!(parsed.len(), 2 + 2 * MAX_RECORD_LINES);
        assert_eq!(parsed[2], ok(3, &["0", "t"]));
        let last = 2 * MAX_RECORD_LINES - 1;
        assert_eq!(
            parsed[parsed.len() - 1],
            ok(2 + 2 * MAX_RECORD_LINES as u64, &[&last.to_string(), "t"])
        );
    }

    #[test]
    fn a_field_spanning_many_lines_is_parsed_on_not_again() {
        // Within the bound, a long multi-line field parses to the same bytes as written.
        let text: String = (0..MAX_RECORD_LINES - 1)
            .map(|i| format!("l{i}\n"))
            .collect();
        let input = format!("\"{text}\",end\nnext\n");
        let parsed = read_all(&input);
        assert_eq!(
            parsed,
            vec![
                ok(1, &[&text, "end"]),
                ok(MAX_RECORD_LINES as u64 + 1, &["next"])
            ]
        );
    }

    proptest::proptest! {
        /// On well-formed input (written by the `csv` crate), every record, field and starting
        /// line equals what the `csv` crate reads back.
        #[test]
        fn reads_what_the_csv_crate_reads(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-c ,\"\n\r]{0,6}", 1..4),
                1..12,
            )
        ) {
            let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            for row in &rows {
                writer.write_record(row).unwrap();
            }
            let bytes = writer.into_inner().unwrap();
            let text = String::from_utf8(bytes.clone()).unwrap();
            let mut expected = Vec::new();
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes.as_slice());
            let mut record = csv::ByteRecord::new();
            while reader.read_byte_record(&mut record).unwrap() {
                let line = record.position().unwrap().line();
                let fields: Vec<String> = record
                    .iter()
                    .map(|f| String::from_utf8(f.to_vec()).unwrap())
                    .collect();
                expected.push(Ok((line, fields)));
            }
            proptest::prop_assert_eq!(read_all(&text), expected);
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, or a valid file with bytes changed: every record is read or named
        /// malformed, the reader ends, and it never holds much more than the limit.
        #[test]
        fn any_bytes_are_read_or_refused_within_the_limit(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..16),
            limit in 1usize..256,
        ) {
            let mut valid = b"polarity,id,date,query,user,text\n".to_vec();
            for i in 0..40 {
                valid.extend_from_slice(
                    format!("0,{i},d,NO_QUERY,u,\"a \"\"quoted\"\", text\nover lines\"\n").as_bytes(),
                );
            }
            let len = valid.len();
            for &(at, value) in &edits {
                valid[at % len] = value;
            }
            for input in [noise.clone(), valid] {
                let mut reader = RecordReader::new(input.as_slice()).with_max_record_bytes(limit);
                let mut record = Record::default();
                let mut outcomes = 0;
                loop {
                    let outcome = reader.read_record(&mut record).unwrap();
                    // The first line and one more, each at most the limit and its newline.
                    proptest::prop_assert!(reader.pending.len() <= 2 * (limit + 1));
                    if outcome == ReadOutcome::End {
                        break;
                    }
                    outcomes += 1;
                    proptest::prop_assert!(outcomes <= input.len(), "the reader does not end");
                }
            }
        }
    }
}
