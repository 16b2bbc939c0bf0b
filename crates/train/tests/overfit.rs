//! The optimizer really trains: a model built directly on an autodiff device (every parameter a
//! leaf) overfits one batch.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{RobertaConfig, RobertaForSequenceClassification};
use sentiment_train::{AdamWSettings, FlatAdamW};

#[test]
fn adamw_overfits_one_batch() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let config = RobertaConfig::preset("tiny", 100).unwrap();
    let mut model = RobertaForSequenceClassification::new(&config, &device);
    let mut optim = FlatAdamW::new(AdamWSettings {
        max_grad_norm: 1.0,
        ..AdamWSettings::default()
    });
    let ids: Vec<i64> = (0..8 * 8).map(|i| (i * 7 % 90 + 5) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [8, 8]), &device);
    let mask = Tensor::<2, Int>::ones([8, 8], &device);
    let labels = vec![0i64, 1, 0, 1, 1, 0, 1, 0];
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [8]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut first = None;
    let mut last = f32::NAN;
    for _ in 0..60 {
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = loss_fn.forward(logits, labels.clone());
        last = loss.clone().into_scalar();
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let step;
        (model, step) = optim.step(1e-3, model, grads).unwrap();
        let norm = step.grad_norm();
        assert!(norm.is_finite() && norm > 0.0);
    }
    assert!(first.unwrap() > 0.6, "starts near ln 2");
    assert!(last < 0.1, "final loss {last}");
}
