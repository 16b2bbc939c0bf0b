//! The two Sentiment140 layouts, how to tell them apart, and how their bytes become text.

use serde::{Deserialize, Serialize};

/// Layout of the input CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// The original release: no header, six columns `polarity,id,date,query,user,text`,
    /// polarity 0 / 2 / 4.
    Raw,
    /// A header naming at least a text column and an integer label column.
    Cleaned,
}

/// Byte encoding of the text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoding {
    /// Windows-1252, a superset of Latin-1: what the raw Sentiment140 file uses. Every byte
    /// sequence decodes, so this encoding never rejects a row.
    Cp1252,
    /// UTF-8; invalid sequences make the row malformed.
    Utf8,
}

impl InputFormat {
    /// The encoding the format is published in.
    pub fn default_encoding(self) -> TextEncoding {
        match self {
            InputFormat::Raw => TextEncoding::Cp1252,
            InputFormat::Cleaned => TextEncoding::Utf8,
        }
    }
}

/// Number of columns in the raw release.
pub const RAW_COLUMNS: usize = 6;
/// Index of `polarity` in the raw release.
pub const RAW_POLARITY: usize = 0;
/// Index of `text` in the raw release.
pub const RAW_TEXT: usize = 5;

/// Guesses the format from the first record's fields: a header holding the text and label
/// column names means cleaned; six fields starting with a polarity of 0, 2 or 4 mean raw.
pub fn detect_format(
    first_record: &[&[u8]],
    text_column: &str,
    label_column: &str,
) -> Result<InputFormat, String> {
    let names: Vec<String> = first_record
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    if names.iter().any(|n| n == text_column) && names.iter().any(|n| n == label_column) {
        return Ok(InputFormat::Cleaned);
    }
    if first_record.len() == RAW_COLUMNS && matches!(names[RAW_POLARITY].as_str(), "0" | "2" | "4")
    {
        return Ok(InputFormat::Raw);
    }
    let shown: Vec<&str> = names.iter().map(|n| truncate(n, 24)).collect();
    Err(format!(
        "first line has {} field(s) [{}]: neither a header with `{text_column}` and \
         `{label_column}` nor a raw Sentiment140 row (6 fields, polarity 0/2/4)",
        names.len(),
        shown.join(", ")
    ))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Decodes Windows-1252 bytes as the WHATWG encoding standard does (encoding_rs): bytes
/// 0x80–0x9F map to the characters Windows assigns them (curly quotes, dashes, the euro
/// sign), the five unassigned ones to the C1 control of the same value, so every byte decodes.
pub fn decode_cp1252(bytes: &[u8]) -> String {
    encoding_rs::WINDOWS_1252
        .decode_without_bom_handling(bytes)
        .0
        .into_owned()
}

/// Encodes text as Windows-1252 (the inverse of [`decode_cp1252`]); `None` when a character
/// has no Windows-1252 byte. Used to write raw-format fixtures.
pub fn encode_cp1252(text: &str) -> Option<Vec<u8>> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_layouts() {
        let header: Vec<&[u8]> = vec![b"", b"text", b"sentiment"];
        assert_eq!(
            detect_format(&header, "text", "sentiment"),
            Ok(InputFormat::Cleaned)
        );
        let raw: Vec<&[u8]> = vec![b"4", b"1", b"Mon", b"NO_QUERY", b"u", b"hi"];
        assert_eq!(
            detect_format(&raw, "text", "sentiment"),
            Ok(InputFormat::Raw)
        );
        let other: Vec<&[u8]> = vec![b"a", b"b"];
        let err = detect_format(&other, "text", "sentiment").unwrap_err();
        assert!(err.contains("2 field(s) [a, b]"), "{err}");
    }

    #[test]
    fn cp1252_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = decode_cp1252(&all);
        assert_eq!(text.chars().count(), 256);
        assert_eq!(encode_cp1252(&text).unwrap(), all);
        assert_eq!(decode_cp1252(b"caf\xe9 \x93ok\x94 \x80"), "café “ok” €");
        assert_eq!(encode_cp1252("😀"), None);
    }
}
