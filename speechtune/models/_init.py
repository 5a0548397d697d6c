"""DeepNorm residual scaling and initialisation.

Reference: H. Wang, S. Ma, L. Dong, S. Huang, D. Zhang, F. Wei, "DeepNet: Scaling
Transformers to 1,000 Layers", 2022 (arXiv:2203.00555). For an encoder-only stack of ``N``
layers DeepNet uses the post-LN residual ``LN(alpha * x + f(x))`` with
``alpha = (2N)^(1/4)`` and initialises the feed-forward, value and output projections with
Xavier-normal of gain ``beta = (8N)^(-1/4)`` (query/key projections keep gain 1).

Here the rule is applied to the encoder only; the attention decoder keeps its pre-LN layout
and default initialisation. RNN encoders have no residual stack, so DeepNorm does not apply
to them (see :func:`speechtune.models.build_model`).
"""

from __future__ import annotations

from torch import nn

from speechtune.models._layers import FeedForward, MultiHeadAttention


def deepnorm_alpha(num_layers: int) -> float:
    """Residual up-weighting ``(2N)^(1/4)`` for an encoder of ``num_layers`` layers."""
    return (2.0 * num_layers) ** 0.25


def deepnorm_beta(num_layers: int) -> float:
    """Xavier gain ``(8N)^(-1/4)`` for an encoder of ``num_layers`` layers."""
    return (8.0 * num_layers) ** -0.25


def _xavier(linear: nn.Linear, gain: float) -> None:
    nn.init.xavier_normal_(linear.weight, gain=gain)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def apply_deepnorm_init(module: nn.Module, num_layers: int) -> None:
    """Re-initialise every attention and feed-forward block inside ``module`` the DeepNet way.

    Value/output projections and feed-forward layers get gain ``beta``; query/key
    projections get gain 1. Pointwise layers of the Conformer convolution module are
    position-wise feed-forward maps, so they are scaled with ``beta`` too.

    Args:
        module: The encoder.
        num_layers: ``N`` of the encoder.
    """
    beta = deepnorm_beta(num_layers)
    for sub in module.modules():
        if isinstance(sub, MultiHeadAttention):
            _xavier(sub.q_proj, 1.0)
            _xavier(sub.k_proj, 1.0)
            _xavier(sub.v_proj, beta)
            _xavier(sub.out_proj, beta)
        elif isinstance(sub, FeedForward):
            _xavier(sub.w1, beta)
            _xavier(sub.w2, beta)
        elif getattr(sub, "deepnorm_linears", None):
            for linear in sub.deepnorm_linears():  # type: ignore[operator]
                _xavier(linear, beta)
