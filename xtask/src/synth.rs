//! Synthetic Sentiment140-shaped tweets: the bundled fixtures and the benchmark input.
//!
//! The real file cannot be downloaded here, so the project ships tweets made by this seeded
//! generator instead: each tweet mixes words of its class with filler, a few words of the other
//! class, negations, mentions, links, HTML entities, hashtags, Latin-1 and (in UTF-8 output)
//! emoji, and 10% of the labels are flipped, so a classifier can learn it but not perfectly.

use std::io::{self, Write};

use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

const POSITIVE: &[&str] = &[
    "love",
    "great",
    "awesome",
    "happy",
    "amazing",
    "best",
    "fun",
    "thanks",
    "excited",
    "beautiful",
    "cool",
    "nice",
    "good",
    "lol",
    "yay",
    "glad",
    "perfect",
    "enjoying",
    "wonderful",
    "sweet",
    "proud",
    "smile",
    "haha",
    "congrats",
    "lovely",
    "fantastic",
    "blessed",
    "win",
];
const NEGATIVE: &[&str] = &[
    "hate",
    "sad",
    "awful",
    "terrible",
    "worst",
    "sick",
    "tired",
    "miss",
    "bored",
    "sucks",
    "ugh",
    "annoying",
    "sorry",
    "hurts",
    "bad",
    "cry",
    "lonely",
    "broken",
    "stressed",
    "fail",
    "lost",
    "angry",
    "headache",
    "boring",
    "crappy",
    "depressed",
    "sigh",
    "disappointed",
];
const FILLER: &[&str] = &[
    "today", "work", "going", "the", "game", "movie", "night", "weekend", "school", "morning",
    "coffee", "home", "just", "got", "back", "from", "my", "friend", "new", "phone", "rain",
    "music", "class", "lunch", "bus", "to", "a", "is", "it", "so", "this", "that", "with", "at",
    "now", "in", "on", "for", "of", "and", "was", "be", "all", "day", "time", "week", "still",
    "tomorrow", "again", "really", "about", "show", "twitter", "exam", "beach", "party", "sleep",
    "car", "dinner", "mom", "dad", "sister", "job", "concert", "dog", "cat", "book", "city",
];
const LATIN1: &[&str] = &[
    "café",
    "niño",
    "über",
    "naïve",
    "façade",
    "jalapeño",
    "crème",
    "señor",
];
const EMOJI: &[&str] = &["😀", "😢", "❤️", "🎉", "😡", "👍", "🙏🏽", "🇧🇷"];
const NAMES: &[&str] = &[
    "switchfoot",
    "Kenichan",
    "mattycus",
    "ElleCTF",
    "Karoli",
    "joy_wolf",
    "mybirch",
    "coZZ",
    "2Hood4Hollywood",
    "LettyA",
    "_TheSpecialOne_",
    "nationwideclass",
    "Tatiana_K",
];
const DAYS: &[&str] = &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: &[&str] = &["Apr", "May", "Jun"];

/// Which bytes the generated file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Sentiment140's release: no header, six quoted columns, Windows-1252.
    Raw,
    /// `text,sentiment` header, 0/1 labels, UTF-8 (emoji allowed).
    Cleaned,
}

/// A seeded tweet generator.
pub struct TweetGenerator {
    rng: ChaCha8Rng,
    layout: Layout,
    /// Fraction of neutral (polarity 2) rows in raw output.
    neutral_fraction: f64,
    next_id: u64,
}

impl TweetGenerator {
    /// A generator for `layout`, reproducible from `seed`.
    pub fn new(seed: u64, layout: Layout, neutral_fraction: f64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            layout,
            neutral_fraction,
            next_id: 1_467_810_369,
        }
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.rng.random_range(0..words.len())]
    }

    /// One tweet: (polarity 0 / 2 / 4, text).
    pub fn tweet(&mut self) -> (u8, String) {
        let neutral = self.rng.random_bool(self.neutral_fraction);
        let positive = self.rng.random_bool(0.5);
        let (own, other) = if positive {
            (POSITIVE, NEGATIVE)
        } else {
            (NEGATIVE, POSITIVE)
        };
        let mut words: Vec<String> = Vec::new();
        // Real tweets' lengths: the filler words make up a token count drawn from their
        // distribution, with what the rest of the tweet adds on average.
        let target = draw_tweet_length(&mut self.rng);
        let total = ((target - BASE_TOKENS) / TOKENS_PER_WORD).round().max(2.0) as usize;
        // A longer tweet says more: one sentiment word in seven beyond the first one or two.
        let cues = if neutral {
            0
        } else {
            self.rng.random_range(1..3) + total / 7
        };
        for _ in 0..total.saturating_sub(cues).max(1) {
            words.push(self.pick(FILLER).to_string());
        }
        if !neutral {
            for _ in 0..cues {
                let at = self.rng.random_range(0..=words.len());
                let word = self.pick(own).to_string();
                words.insert(at, word);
            }
            if self.rng.random_bool(0.3) {
                let at = self.rng.random_range(0..=words.len());
                let word = self.pick(other);
                // "not happy" keeps the tweet's own class while using the other's word.
                let word = if self.rng.random_bool(0.5) {
                    format!("not {word}")
                } else {
                    word.to_string()
                };
                words.insert(at, word);
            }
        }
        if self.rng.random_bool(0.25) {
            let name = self.pick(NAMES);
            words.insert(0, format!("@{name}"));
        }
        if self.rng.random_bool(0.1) {
            let at = self.rng.random_range(0..=words.len());
            words.insert(at, "&amp;".into());
        }
        if self.rng.random_bool(0.05) {
            words.push("&lt;3".into());
        }
        if self.rng.random_bool(0.05) {
            let at = self.rng.random_range(0..=words.len());
            words.insert(at, "&quot;so&quot;".into());
        }
        if self.rng.random_bool(0.12) {
            let code: u32 = self.rng.random_range(0x10000..0xFFFFF);
            words.push(format!("http://twitpic.com/{code:x}"));
        }
        if self.rng.random_bool(0.08) {
            let tag = self.pick(FILLER);
            words.push(format!("#{tag}"));
        }
        if self.rng.random_bool(0.05) {
            let at = self.rng.random_range(0..=words.len());
            words.insert(at, self.pick(LATIN1).to_string());
        }
        if self.layout == Layout::Cleaned && self.rng.random_bool(0.08) {
            words.push(self.pick(EMOJI).to_string());
        }
        if self.rng.random_bool(0.05) {
            let at = self.rng.random_range(0..words.len());
            words[at] = format!("\"{}\"", words[at]);
        }
        let mut text = String::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                let separator = match self.rng.random_range(0..40) {
                    0..=2 => ", ",
                    3 => "  ",
                    4 => "... ",
                    _ => " ",
                };
                text.push_str(separator);
            }
            text.push_str(word);
        }
        match self.rng.random_range(0..10) {
            0 => text.push_str("!!!"),
            1 => text.push('!'),
            2 => text.push_str(" :"),
            3 => text.push(' '),
            _ => {}
        }
        if self.rng.random_bool(0.3) {
            capitalise_first(&mut text);
        }
        let mut polarity = if neutral {
            2
        } else if positive {
            4
        } else {
            0
        };
        // Label noise: real tweets are often mislabelled by the emoticon heuristic.
        if !neutral && self.rng.random_bool(0.1) {
            polarity = 4 - polarity;
        }
        (polarity, text)
    }

    /// Writes one row in the generator's layout.
    pub fn write_row(&mut self, out: &mut impl Write, polarity: u8, text: &str) -> io::Result<()> {
        match self.layout {
            Layout::Raw => {
                let id = self.next_id;
                self.next_id += self.rng.random_range(1..500);
                let date = format!(
                    "{} {} {:02} {:02}:{:02}:{:02} PDT 2009",
                    self.pick(DAYS),
                    self.pick(MONTHS),
                    self.rng.random_range(1..29),
                    self.rng.random_range(0..24),
                    self.rng.random_range(0..60),
                    self.rng.random_range(0..60)
                );
                let user = self.pick(NAMES);
                let text = sentiment_data::encode_cp1252(text).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "text not in Windows-1252")
                })?;
                write!(
                    out,
                    "\"{polarity}\",\"{id}\",\"{date}\",\"NO_QUERY\",\"{user}\",\""
                )?;
                out.write_all(&escape_quotes(&text))?;
                out.write_all(b"\"\n")
            }
            Layout::Cleaned => {
                let label = u8::from(polarity == 4);
                writeln!(out, "{},{label}", quote_if_needed(text))
            }
        }
    }

    /// Writes the cleaned layout's header (nothing for raw).
    pub fn write_header(&self, out: &mut impl Write) -> io::Result<()> {
        match self.layout {
            Layout::Raw => Ok(()),
            Layout::Cleaned => writeln!(out, "text,sentiment"),
        }
    }

    /// Writes `rows` tweets (with the header, if any).
    pub fn write_rows(&mut self, out: &mut impl Write, rows: usize) -> io::Result<()> {
        self.write_header(out)?;
        for _ in 0..rows {
            let (polarity, text) = self.tweet();
            if self.layout == Layout::Cleaned && polarity == 2 {
                continue;
            }
            self.write_row(out, polarity, &text)?;
        }
        Ok(())
    }
}

fn capitalise_first(text: &mut String) {
    if let Some(first) = text.chars().next() {
        let upper: String = first.to_uppercase().collect();
        text.replace_range(..first.len_utf8(), &upper);
    }
}

fn escape_quotes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out
}

/// CSV-quotes a field the way pandas writes it: only when it holds a comma, quote or newline.
fn quote_if_needed(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_both_classes() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        TweetGenerator::new(7, Layout::Raw, 0.01)
            .write_rows(&mut a, 300)
            .unwrap();
        TweetGenerator::new(7, Layout::Raw, 0.01)
            .write_rows(&mut b, 300)
            .unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8_lossy(&a);
        assert!(text.lines().any(|l| l.starts_with("\"0\"")));
        assert!(text.lines().any(|l| l.starts_with("\"4\"")));
    }
}

/// Quantiles of real tweets' token counts (`<s>` and `</s>` included) under an 8k byte-level
/// BPE, measured on 22,805 human-labelled English tweets: mean 31.8, median 32, 90th percentile
/// 46, 99th 59, 0.25% longer than 64 (up to 80 here). Linear between the points.
const TWEET_LENGTH_QUANTILES: &[(f64, f64)] = &[
    (0.0, 3.0),
    (0.10, 17.0),
    (0.25, 24.0),
    (0.50, 32.0),
    (0.75, 39.0),
    (0.90, 46.0),
    (0.99, 59.0),
    (0.9975, 64.0),
    (1.0, 80.0),
];

/// A generated tweet's tokens under the pipeline's tokenizer trained on the sample, on
/// average: `BASE_TOKENS + TOKENS_PER_WORD × filler words` (`<s>`, `</s>`, sentiment words,
/// mentions, links and punctuation included; fitted to the token counts that
/// `xtask/bench/sample_lengths.py` measures).
const BASE_TOKENS: f64 = 3.0;
const TOKENS_PER_WORD: f64 = 1.25;

/// One token count drawn from real tweets' distribution.
fn draw_tweet_length(rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random();
    let k = TWEET_LENGTH_QUANTILES
        .windows(2)
        .position(|w| u < w[1].0)
        .unwrap_or(TWEET_LENGTH_QUANTILES.len() - 2);
    let ((p0, l0), (p1, l1)) = (TWEET_LENGTH_QUANTILES[k], TWEET_LENGTH_QUANTILES[k + 1]);
    l0 + (u - p0) / (p1 - p0) * (l1 - l0)
}

/// `n` token counts drawn from real tweets' distribution, cut to `max_length` as truncation
/// does, deterministic for `seed`.
pub fn tweet_lengths(n: usize, seed: u64, max_length: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (draw_tweet_length(&mut rng).round() as usize).clamp(3, max_length))
        .collect()
}

#[cfg(test)]
mod length_tests {
    use super::tweet_lengths;

    #[test]
    fn drawn_lengths_have_real_tweets_statistics() {
        let mut lengths = tweet_lengths(100_000, 1, 64);
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        lengths.sort_unstable();
        let quantile = |q: f64| lengths[(q * lengths.len() as f64) as usize];
        assert!((mean - 31.8).abs() < 0.5, "mean {mean}");
        assert!(
            (31..=33).contains(&quantile(0.5)),
            "median {}",
            quantile(0.5)
        );
        assert!((45..=47).contains(&quantile(0.9)), "p90 {}", quantile(0.9));
        assert!(
            (58..=60).contains(&quantile(0.99)),
            "p99 {}",
            quantile(0.99)
        );
        assert_eq!(*lengths.last().unwrap(), 64);
        assert!(lengths[0] >= 3);
    }
}
