//! Unigram counts with the semantics of scikit-learn's `CountVectorizer()` defaults.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::sparse::SparseRows;

/// scikit-learn's default `token_pattern`, `(?u)\b\w\w+\b`, with Python's `\w`.
///
/// Python's `re` counts a character as `\w` when `str.isalnum()` holds or it is `_`: the
/// Unicode letters (L*) and numbers (N*). The `regex` crate's `\w` also takes combining marks
/// and connector punctuation, and its `\b` follows its own `\w`, so the class is spelled out.
/// Between word boundaries, `\w\w+` is a maximal run of two or more such characters: exactly
/// what `{2,}` matches greedily, left to right.
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}_]{2,}").expect("the token pattern is a valid regex"));

/// The tokens scikit-learn's default analyzer gives for `text`: lower-cased (Python's
/// `str.lower`, which Rust's `to_lowercase` matches, final sigma included), then every run of
/// two or more word characters.
pub fn tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    TOKEN
        .find_iter(&lower)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// A vocabulary learnt from training texts: every token seen, numbered in sorted order as
/// scikit-learn numbers its features (`min_df=1`, no `max_features`, no stop words).
#[derive(Debug, Clone, Default)]
pub struct CountVectorizer {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl CountVectorizer {
    /// Learns the vocabulary of `texts`.
    pub fn fit<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<String> = texts
            .into_iter()
            .flat_map(tokens)
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        names.sort_unstable();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect();
        Self { index, names }
    }

    /// The features' tokens, by feature index (scikit-learn's `get_feature_names_out()`).
    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    /// The number of features.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no token was learnt.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The token counts of each text (tokens outside the vocabulary are ignored, as
    /// scikit-learn's `transform` ignores them).
    pub fn transform<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> SparseRows {
        let mut rows = SparseRows::default();
        let mut counts: HashMap<u32, f64> = HashMap::new();
        for text in texts {
            counts.clear();
            for token in tokens(text) {
                if let Some(&feature) = self.index.get(&token) {
                    *counts.entry(feature).or_default() += 1.0;
                }
            }
            let mut row: Vec<(u32, f64)> = counts.iter().map(|(&f, &c)| (f, c)).collect();
            row.sort_unstable_by_key(|&(f, _)| f);
            rows.push(&row);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_default_token_pattern() {
        // One-character words are dropped; punctuation, apostrophes and @ split words; `_`
        // and digits are word characters; case folds.
        assert_eq!(
            tokens("I can't BELIEVE it!! @user_1 a 2x b12 ok"),
            ["can", "believe", "it", "user_1", "2x", "b12", "ok"]
        );
        // Letters of every script are word characters; emoji are not.
        assert_eq!(tokens("Привет 😀 мир 今日は"), ["привет", "мир", "今日は"]);
        // A combining mark is not a word character in Python: it splits the word.
        assert_eq!(tokens("cafe\u{301}s"), ["cafe"]);
    }

    #[test]
    fn features_are_numbered_in_sorted_order_and_unknown_tokens_ignored() {
        let vectorizer = CountVectorizer::fit(["the cat", "a dog and the cat"]);
        assert_eq!(vectorizer.feature_names(), ["and", "cat", "dog", "the"]);
        let rows = vectorizer.transform(["the the bird cat"]);
        assert_eq!(rows.row(0), (&[1u32, 3][..], &[1.0, 2.0][..]));
    }
}
