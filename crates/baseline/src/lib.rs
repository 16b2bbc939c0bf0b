//! A bag-of-words logistic regression: the baseline a transformer has to beat.
//!
//! It is scikit-learn's `make_pipeline(CountVectorizer(), LogisticRegression())` with the
//! defaults: lower-cased unigram counts of tokens of two or more word characters
//! ([`CountVectorizer`]), then an L2-regularised logistic regression with `C = 1`, solved by
//! L-BFGS ([`LogisticRegression`]). Its probabilities equal scikit-learn's at convergence
//! (`tests/sklearn.rs`, against `fixtures/baseline/`).
//!
//! The data stay sparse ([`SparseRows`]): `linfa-logistic` would fit the model but takes a
//! dense matrix, and 1.6 million tweets over a vocabulary of hundreds of thousands of tokens
//! do not fit in memory densely; so the objective is written here and the optimiser is
//! `argmin`'s L-BFGS.
//!
//! ```
//! use sentiment_baseline::{BagOfWords, LogisticRegression};
//!
//! let texts = ["good day", "so good", "bad day", "so bad"];
//! let model = BagOfWords::fit(texts, &[1, 1, 0, 0], 2, &LogisticRegression::default())?;
//! assert_eq!(model.predict(["a good one", "a bad one"]), [1, 0]);
//! # Ok::<(), sentiment_baseline::BaselineError>(())
//! ```

mod logistic;
mod sparse;
mod vectorizer;

pub use logistic::{LogisticModel, LogisticRegression};
pub use sparse::SparseRows;
pub use vectorizer::{CountVectorizer, tokens};

/// Why a baseline could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// There is nothing to learn from.
    #[error("no training rows")]
    NoRows,
    /// Texts and labels do not pair up.
    #[error("{rows} rows but {labels} labels")]
    LengthMismatch {
        /// Rows given.
        rows: usize,
        /// Labels given.
        labels: usize,
    },
    /// A label is not a class id.
    #[error("row {row} has label {label}, but there are {classes} classes")]
    LabelOutOfRange {
        /// 0-based row.
        row: usize,
        /// Its label.
        label: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A setting is out of range.
    #[error("logistic regression: {0}")]
    Settings(String),
    /// L-BFGS failed (a non-finite value, say).
    #[error("logistic regression: L-BFGS failed: {0}")]
    Optimizer(String),
}

/// A vocabulary and a logistic regression over its counts.
#[derive(Debug, Clone)]
pub struct BagOfWords {
    /// The vocabulary, learnt from the training texts.
    pub vectorizer: CountVectorizer,
    /// The classifier over its counts.
    pub model: LogisticModel,
}

impl BagOfWords {
    /// Learns the vocabulary of `texts`, then the classifier of `labels` (class ids below
    /// `classes`).
    pub fn fit<'a>(
        texts: impl IntoIterator<Item = &'a str> + Clone,
        labels: &[usize],
        classes: usize,
        settings: &LogisticRegression,
    ) -> Result<Self, BaselineError> {
        let vectorizer = CountVectorizer::fit(texts.clone());
        let rows = vectorizer.transform(texts);
        let model = settings.fit(&rows, labels, classes, vectorizer.len())?;
        Ok(Self { vectorizer, model })
    }

    /// The most probable class of each text.
    pub fn predict<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        self.model.predict(&self.vectorizer.transform(texts))
    }
}
