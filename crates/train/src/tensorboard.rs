//! TensorBoard event files (`--report-to tensorboard`): scalars under the names the Trainer
//! uses (`train/loss`, `eval/f1`, …) by global step, in `RUN/tb/events.out.tfevents.*`.
//!
//! The format is small and stable, so it is written here rather than through a protobuf stack:
//! a file is a sequence of TFRecords (length as u64 little-endian, the masked CRC-32C of the
//! length, the data, the masked CRC-32C of the data), each holding one serialised `Event`
//! protobuf: `wall_time` (field 1, double), `step` (2, int64), then `file_version` (3, string)
//! for the first record or `summary` (5) with one `Summary.Value` of `tag` (1, string) and
//! `simple_value` (2, float). The bytes equal those of TensorBoard's own writer for the same
//! event (tested against a file it wrote: `fixtures/tensorboard/`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::TrainError;

/// Appends scalar events to one event file.
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), named as TensorBoard's writers name theirs,
    /// starting with the `brain.Event:2` version record. A resumed run writes a new file beside
    /// the earlier ones; TensorBoard reads them all.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
        let now = wall_time();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        let mut writer = Self {
            path,
            file: std::io::BufWriter::new(file),
        };
        writer.write_record(&version_event(now))?;
        writer.flush()?;
        Ok(writer)
    }

    /// Appends `value` under `tag` at global step `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) -> Result<(), TrainError> {
        self.write_record(&scalar_event(wall_time(), step as i64, tag, value as f32))
    }

    /// Writes what is buffered, so a reader (or a killed run's folder) has every event so far.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(TrainError::io(&self.path))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), TrainError> {
        let record = tf_record(data);
        self.file
            .write_all(&record)
            .map_err(TrainError::io(&self.path))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The TFRecord framing of `data`.
pub fn tf_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc(data).to_le_bytes());
    record
}

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The first event of a file: `Event { wall_time, file_version: "brain.Event:2" }`.
pub fn version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    event.push(0x09); // field 1, 64-bit
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_bytes(&mut event, 3, b"brain.Event:2");
    event
}

/// `Event { wall_time, step, summary: { value: [{ tag, simple_value }] } }`.
pub fn scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut summary_value = Vec::new();
    put_bytes(&mut summary_value, 1, tag.as_bytes());
    summary_value.push(0x15); // field 2, 32-bit
    summary_value.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::new();
    put_bytes(&mut summary, 1, &summary_value);
    let mut event = Vec::new();
    event.push(0x09);
    event.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        // proto3 leaves a zero step out, as TensorBoard's writer does.
        event.push(0x10); // field 2, varint
        put_varint(&mut event, step as u64);
    }
    put_bytes(&mut event, 5, &summary);
    event
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_records_frame_as_tfrecord() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let record = tf_record(b"abc");
        assert_eq!(&record[..8], &3u64.to_le_bytes());
        assert_eq!(&record[12..15], b"abc");
        assert_eq!(record.len(), 8 + 4 + 3 + 4);
        // The masked CRC of the empty string, as TensorFlow computes it.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }
}
