//! The fused operations under autodiff, for every backend: each forward is one node of the
//! graph whose backward step is the closed form of the module documentation.

use burn::backend::Backend;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind, unary},
};
use burn::backend::tensor::FloatTensor;

use super::ops::{AttentionSaved, FusedKernels, FusedOps};

/// The layer-norm backward step: the three parents are `x`, `γ` and `β`.
#[derive(Debug)]
struct LayerNormBackward;

impl<B: Backend + FusedKernels> Backward<B, 3> for LayerNormBackward {
    /// `x`, `γ`, the row means and reciprocal standard deviations.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        ternary::<B, _>(ops, grads, |grad, (x, gamma, mean, rstd)| {
            let (grad_x, grad_gamma, grad_beta) =
                B::layer_norm_backward(grad, x, gamma, mean, rstd);
            [grad_x, grad_gamma, grad_beta]
        });
    }
}

/// A backward step with three parents (burn's `unary` for one): `step` turns the output's
/// gradient and the saved state into the parents' gradients, each registered with its parent
/// when the graph tracks it.
fn ternary<B: Backend, S>(
    ops: Ops<S, 3>,
    grads: &mut Gradients,
    step: impl FnOnce(FloatTensor<B>, S) -> [FloatTensor<B>; 3],
) {
    let grad = grads.consume::<B>(&ops.node);
    let values = step(grad, ops.state);
    for (parent, value) in ops.parents.into_iter().zip(values) {
        if let Some(node) = parent {
            grads.register::<B>(node.id, value);
        }
    }
}

impl<B: Backend + FusedKernels + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let y = B::linear_forward(x.clone(), weight.clone(), bias.into_primitive(), bf16);
                prep.finish((x, weight, bf16), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_forward(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                bf16,
            )),
        }
    }

    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([query.node(), key.node(), value.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, saved) = B::attention_forward(
                    query.into_primitive(),
                    key.into_primitive(),
                    value.into_primitive(),
                    bias.into_primitive(),
                    dropout,
                    scale,
                );
                prep.finish(saved, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                query.into_primitive(),
                key.into_primitive(),
                value.into_primitive(),
                bias.into_primitive(),
                dropout,
                scale,
            )),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let (y, mean, rstd) =
                    B::layer_norm_forward(x.clone(), gamma.clone(), beta.into_primitive(), epsilon);
                prep.finish((x, gamma, mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                Some(beta.into_primitive()),
                epsilon,
            )),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y =
                    <B as burn::backend::ops::ActivationOps<B>>::softmax(x.into_primitive(), dim);
                prep.finish((y.clone(), dim), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                <B as burn::backend::ops::ActivationOps<B>>::softmax(x.into_primitive(), dim),
            ),
        }
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), B::exact_gelu_forward(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::exact_gelu_forward(x.into_primitive())),
        }
    }

    fn fused_dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self> {
        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::dropout_forward(x.into_primitive(), prob);
                prep.finish((saved, prob), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dropout_forward(x.into_primitive(), prob).0),
        }
    }
}

/// The linear layer's backward step: the parents are `x`, `w` and `b`.
#[derive(Debug)]
struct LinearBackward;

impl<B: Backend + FusedKernels> Backward<B, 3> for LinearBackward {
    /// `x`, `w`, and whether the forward products were bf16 ones.
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        ternary::<B, _>(ops, grads, |grad, (x, weight, bf16)| {
            let (grad_x, grad_weight, grad_bias) = B::linear_backward(grad, x, weight, bf16);
            [grad_x, grad_weight, grad_bias]
        });
    }
}

/// The fused attention's backward step: the parents are the queries, keys and values (the bias
/// comes from the attention mask and has no gradient).
#[derive(Debug)]
struct AttentionBackward;

impl<B: Backend + FusedKernels> Backward<B, 3> for AttentionBackward {
    type State = AttentionSaved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        ternary::<B, _>(ops, grads, |grad, saved| {
            let (grad_query, grad_key, grad_value) = B::attention_backward(grad, saved);
            [grad_query, grad_key, grad_value]
        });
    }
}

/// The dropout backward step: the saved mask and the probability.
#[derive(Debug)]
struct DropoutBackward;

impl<B: Backend + FusedKernels> Backward<B, 1> for DropoutBackward {
    /// What the forward kernel saved (the scaled mask, or libtorch's boolean mask) and `prob`.
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (saved, prob) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::dropout_backward(grad, saved, prob)
        });
    }
}

/// The exact GELU's backward step, from its input.
#[derive(Debug)]
struct GeluBackward;

impl<B: Backend + FusedKernels> Backward<B, 1> for GeluBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::exact_gelu_backward(x, grad)
        });
    }
}

/// The softmax backward step: its output and dimension are all it needs.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend + FusedKernels> Backward<B, 1> for SoftmaxBackward {
    /// The softmax output and the dimension it normalises.
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::softmax_backward(grad, y, dim)
        });
    }
}
