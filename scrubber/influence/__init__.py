"""Influence-function updates: parameter selection, curvature products, solvers, K-FAC, IAU, residuals."""

from .hvp import (
    CurvatureProduct,
    OutputLoss,
    causal_lm_output_loss,
    dense_hessian,
    eager_attention,
    finite_difference_hvp,
    flat_gradient,
    ggn_vp,
    hvp,
    make_ggn_vp,
    make_hvp,
)
from .iau import forget_gradient, gradient_restriction_penalty, iau_step
from .kfac import KFAC
from .params import (
    PRESETS,
    LoraTarget,
    ParameterSelection,
    add_lora_adapter,
    existing_lora_adapter,
    find_block_list,
    lora_update_target,
    select_parameters,
)
from .residual import certifiable_lm_head, certified_bound, gradient_residual, l2_regularized
from .second_order import SecondOrderResult, curvature_operator, second_order_step
from .solvers import SolverInfo, inverse_hvp, top_eigenvalue

__all__ = [
    "KFAC",
    "PRESETS",
    "CurvatureProduct",
    "LoraTarget",
    "OutputLoss",
    "ParameterSelection",
    "SecondOrderResult",
    "SolverInfo",
    "add_lora_adapter",
    "causal_lm_output_loss",
    "certifiable_lm_head",
    "certified_bound",
    "curvature_operator",
    "dense_hessian",
    "eager_attention",
    "existing_lora_adapter",
    "find_block_list",
    "finite_difference_hvp",
    "flat_gradient",
    "forget_gradient",
    "ggn_vp",
    "gradient_residual",
    "gradient_restriction_penalty",
    "hvp",
    "iau_step",
    "inverse_hvp",
    "l2_regularized",
    "lora_update_target",
    "make_ggn_vp",
    "make_hvp",
    "second_order_step",
    "select_parameters",
    "top_eigenvalue",
]
