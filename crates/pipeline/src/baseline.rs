//! The report's bag-of-words baseline: scikit-learn's `CountVectorizer` + `LogisticRegression`
//! fitted on the train split and scored on the test split, so a user sees at once whether the
//! transformer earns its cost on their data.

use std::path::Path;

use sentiment_baseline::{BagOfWords, LogisticRegression};
use sentiment_data::{Split, read_split};
use sentiment_metrics::{ClassificationReport, ConfusionMatrix};

use crate::PipelineError;

/// The baseline's test metrics, with `positive` as the positive class (the final run's).
pub(crate) fn bag_of_words(
    data: &Path,
    classes: usize,
    positive: usize,
) -> Result<ClassificationReport, PipelineError> {
    let read =
        |split: Split| read_split(&data.join(split.file_name())).map_err(PipelineError::from);
    let (train, test) = (read(Split::Train)?, read(Split::Test)?);
    let class_ids = |labels: &[i64]| -> Vec<usize> { labels.iter().map(|&l| l as usize).collect() };
    let stage = PipelineError::stage("fitting the bag-of-words baseline on the train split");
    let model = BagOfWords::fit(
        train.texts.iter().map(String::as_str),
        &class_ids(&train.labels),
        classes,
        &LogisticRegression::default(),
    )
    .map_err(stage)?;
    let predicted = model.predict(test.texts.iter().map(String::as_str));
    let matrix = ConfusionMatrix::from_labels(&class_ids(&test.labels), &predicted, classes)
        .map_err(PipelineError::stage("scoring the bag-of-words baseline"))?;
    Ok(matrix.report(positive))
}
