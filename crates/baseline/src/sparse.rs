//! Compressed sparse rows: a document-term matrix is almost all zeros (a tweet has a dozen
//! of the vocabulary's tens of thousands of tokens), so only the non-zeros are kept.

/// A row-major sparse matrix (CSR): row `i`'s columns and values are
/// `indices[indptr[i]..indptr[i + 1]]` and the same range of `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl Default for SparseRows {
    fn default() -> Self {
        Self {
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl SparseRows {
    /// Appends a row given as `(column, value)` pairs.
    pub fn push(&mut self, row: &[(u32, f64)]) {
        self.indices.extend(row.iter().map(|&(c, _)| c));
        self.values.extend(row.iter().map(|&(_, v)| v));
        self.indptr.push(self.indices.len());
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.indptr.len() - 1
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`: its columns and their values.
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let range = self.indptr[i]..self.indptr[i + 1];
        (&self.indices[range.clone()], &self.values[range])
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = (&[u32], &[f64])> {
        (0..self.len()).map(|i| self.row(i))
    }
}

/// `row · weights`.
pub(crate) fn dot((columns, values): (&[u32], &[f64]), weights: &[f64]) -> f64 {
    columns
        .iter()
        .zip(values)
        .map(|(&c, &v)| v * weights[c as usize])
        .sum()
}
