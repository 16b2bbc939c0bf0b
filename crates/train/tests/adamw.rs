//! [`FlatAdamW`]: the same updates as Burn's per-tensor AdamW with global-norm clipping (which
//! `tests/parity.rs` checks against PyTorch), a save / load that continues bit for bit, and
//! refusals that name what changed.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{RobertaConfig, RobertaForSequenceClassification};
use sentiment_train::{AdamWSettings, FlatAdamW, TrainError, clip_grad_norm};

const SETTINGS: AdamWSettings = AdamWSettings {
    beta1: 0.9,
    beta2: 0.98,
    epsilon: 1e-6,
    weight_decay: 0.01,
    max_grad_norm: 0.3,
};

fn model(device: &Device, vocab: usize) -> RobertaForSequenceClassification {
    device.seed(11);
    let mut config = RobertaConfig::preset("tiny", vocab).unwrap();
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    config.classifier_dropout = Some(0.0);
    RobertaForSequenceClassification::new(&config, device)
}

/// The gradients of the cross-entropy on a fixed batch that changes with `step`.
fn gradients(
    model: &RobertaForSequenceClassification,
    step: usize,
    device: &Device,
) -> GradientsParams {
    let ids: Vec<i64> = (0..4 * 8)
        .map(|i| ((i * 7 + step * 13) % 90 + 5) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [4, 8]), device);
    let mask = Tensor::<2, Int>::ones([4, 8], device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 1, 0], [4]), device);
    let loss = CrossEntropyLossConfig::new()
        .init(device)
        .forward(model.forward(ids, mask), labels);
    GradientsParams::from_grads(loss.backward(), model)
}

/// Every parameter's values, in visiting order.
fn weights(model: &RobertaForSequenceClassification) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .extend(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn rate(step: usize) -> f64 {
    1e-3 * (1.0 - step as f64 / 10.0)
}

#[test]
fn equals_burns_adamw_with_global_norm_clipping() {
    equals_burns_adamw_on(&Device::flex().autodiff(), FlatAdamW::new(SETTINGS));
}

/// The GPU backends' code paths (norm and clipping factor on the device, parameters sliced
/// from one flat result), run on the CPU.
#[test]
fn gpu_code_paths_equal_burns_adamw() {
    equals_burns_adamw_on(
        &Device::flex().autodiff(),
        FlatAdamW::new(SETTINGS).with_gpu_code_paths(),
    );
}

/// libtorch's path (PyTorch's in-place operations on the flat buffers), on libtorch's CPU
/// device: needs the `tch` feature and libtorch, so not part of the default test run.
#[cfg(feature = "tch")]
#[test]
#[allow(deprecated)] // burn-tch is deprecated upstream, and still the fastest GPU backend here.
fn libtorch_path_equals_burns_adamw() {
    equals_burns_adamw_on(&Device::libtorch().autodiff(), FlatAdamW::new(SETTINGS));
}

fn equals_burns_adamw_on(device: &Device, mut flat: FlatAdamW) {
    let device = device.clone();
    let mut ours = model(&device, 100);
    let mut theirs = ours.clone();
    let mut burn = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.98)
        .with_epsilon(1e-6)
        .with_weight_decay(0.01)
        .init();
    for step in 0..5 {
        let report;
        (ours, report) = flat
            .step(rate(step), ours.clone(), gradients(&ours, step, &device))
            .unwrap();
        let mut grads = gradients(&theirs, step, &device);
        let norm = clip_grad_norm(&theirs, &mut grads, 0.3);
        theirs = burn.step(rate(step), theirs, grads);
        let flat_norm = report.grad_norm();
        assert!(
            (flat_norm - norm).abs() <= 1e-5 * norm,
            "step {step}: {flat_norm} vs {norm}"
        );
        assert!(norm > 0.3, "clipping is exercised");
    }
    assert_eq!(flat.steps(), 5);
    let (a, b) = (weights(&ours), weights(&theirs));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let moved = a
        .iter()
        .zip(weights(&model(&device, 100)).iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the weights moved ({moved})");
    assert!(worst < 1e-6, "flat and per-tensor AdamW differ by {worst}");
}

/// `optimizer`'s steps `steps` on `model`.
fn take_steps(
    optimizer: &mut FlatAdamW,
    mut model: RobertaForSequenceClassification,
    steps: std::ops::Range<usize>,
    device: &Device,
) -> RobertaForSequenceClassification {
    for step in steps {
        let grads = gradients(&model, step, device);
        (model, _) = optimizer.step(rate(step), model, grads).unwrap();
    }
    model
}

#[test]
fn a_saved_optimizer_continues_bit_for_bit() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.bpk");
    let mut straight = model(&device, 100);
    let mut optimizer = FlatAdamW::new(SETTINGS);
    // Saving before any step writes the settings only, and loads back as a fresh optimizer.
    optimizer.save(&path).unwrap();
    assert!(!path.exists());
    let fresh = FlatAdamW::new(SETTINGS)
        .load(&path, &Device::flex())
        .unwrap();
    assert_eq!(fresh.steps(), 0);

    straight = take_steps(&mut optimizer, straight, 0..3, &device);
    optimizer.save(&path).unwrap();
    let resumed = straight.clone();
    let mut reloaded = FlatAdamW::new(SETTINGS)
        .load(&path, &Device::flex())
        .unwrap();
    assert_eq!(reloaded.steps(), 3);
    straight = take_steps(&mut optimizer, straight, 3..5, &device);
    let resumed = take_steps(&mut reloaded, resumed, 3..5, &device);
    assert_eq!(weights(&straight), weights(&resumed));

    let other = AdamWSettings {
        weight_decay: 0.0,
        ..SETTINGS
    };
    let error = FlatAdamW::new(other)
        .load(&path, &Device::flex())
        .unwrap_err();
    assert!(
        matches!(error, TrainError::BadCheckpoint { .. })
            && error.to_string().contains("optimizer.json"),
        "{error}"
    );
}

/// The CPU backend's update is the same to the bit on any number of threads: its norm is
/// summed per chunk in a fixed order and everything else is per element. The embedding of a
/// 1,000-word vocabulary spans several of its chunks.
#[test]
fn the_cpu_update_does_not_depend_on_the_thread_count() {
    let device = Device::flex().autodiff();
    let start = model(&device, 1000);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut optimizer = FlatAdamW::new(SETTINGS);
        let mut model = start.clone();
        let mut norms = Vec::new();
        for step in 0..3 {
            // The gradients outside the pool, the same for both runs.
            let grads = gradients(&model, step, &device);
            let report;
            (model, report) = pool
                .install(|| optimizer.step(rate(step), model, grads))
                .unwrap();
            norms.push(report.grad_norm());
        }
        (weights(&model), norms)
    };
    let (one, three) = (run(1), run(3));
    assert!(one.1[0] > 0.3, "clipping is exercised: {:?}", one.1);
    assert_eq!(one.1, three.1, "gradient norms");
    assert!(
        one.0 == three.0,
        "the weights differ between 1 and 3 threads"
    );
}

#[test]
fn another_parameter_layout_is_refused_by_name() {
    let device = Device::flex().autodiff();
    let first = model(&device, 100);
    let mut optimizer = FlatAdamW::new(SETTINGS);
    optimizer
        .step(1e-3, first.clone(), gradients(&first, 0, &device))
        .unwrap();
    let bigger = model(&device, 120);
    let error = optimizer
        .step(1e-3, bigger.clone(), gradients(&bigger, 0, &device))
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("word_embeddings.weight") && text.contains("[120, 64]"),
        "{text}"
    );
}
