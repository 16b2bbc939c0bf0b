//! A stranger's tokenizer folder: whatever `tokenizer.json`, `vocab.json`, `merges.txt` or
//! `tokenizer_config.json` hold, loading (and encoding with what loaded) returns a tokenizer
//! or an error, never a panic.

use std::path::{Path, PathBuf};

use sentiment_tokenize::RobertaTokenizer;

fn pretrained() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenize/pretrained")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn mutated_tokenizer_files_load_or_are_refused(
        which in 0usize..4,
        edits in proptest::collection::vec((0usize..1 << 20, proptest::num::u8::ANY), 0..8),
        keep in proptest::option::of(0.0f64..1.0),
        slow in proptest::bool::ANY,
    ) {
        let file = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"][which];
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(pretrained()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        // Without tokenizer.json the slow files are what is read.
        if slow {
            std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        }
        let path = dir.path().join(file);
        if let Ok(mut bytes) = std::fs::read(&path) {
            let len = bytes.len();
            for &(at, value) in &edits {
                bytes[at % len] = value;
            }
            if let Some(fraction) = keep {
                bytes.truncate((len as f64 * fraction) as usize);
            }
            std::fs::write(&path, bytes).unwrap();
        }
        let result = std::panic::catch_unwind(|| {
            if let Ok(tokenizer) = RobertaTokenizer::from_folder(dir.path(), 16) {
                let _ = tokenizer.encode_batch(&["hello @user, café 😀 http://t.co/x"]);
            }
        });
        proptest::prop_assert!(result.is_ok(), "{file}: panicked");
    }
}
