"""Edits: the update methods and the influence math they share.

Methods, one module each, all ``(UpdateTask, UpdateSettings) -> UpdateResult``
(`METHODS`): `first_order`, `second_order` (--solver cg|lissa|kfac), `iau`,
`iterative`, `certified_head` (untied lm_head only, strongly convex, with a
residual bound). Their math, one
module per concept: `params` (which tensors move), `objective` (the edit pairs
and their losses), `curvature` (Hessian/GGN-vector products), `solvers` (CG,
LiSSA), `kfac` (K-FAC/EK-FAC), `residual` (the gradient residual and the
certified lm_head bound), `substitutes` (model-guided replacement values).
`task` holds what every method receives and returns.
"""

from .curvature import (
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
from .certified_head import HeadObjective, build_head_objective, certified_head
from .first_order import first_order
from .iau import forget_gradient, gradient_restriction_penalty, iau, iau_step
from .iterative import iterative
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
from .second_order import SecondOrderResult, curvature_operator, second_order, second_order_step
from .solvers import SolverInfo, inverse_hvp, top_eigenvalue
from .task import UpdateResult, UpdateSettings, UpdateTask

METHODS = {
    "first-order": first_order,
    "second-order": second_order,
    "iau": iau,
    "iterative": iterative,
    "certified-head": certified_head,
}

SOLVERS = ("cg", "lissa", "kfac")
"""Values of UpdateSettings.solver (`--solver`) for second-order."""

__all__ = [
    "METHODS",
    "SOLVERS",
    "HeadObjective",
    "build_head_objective",
    "certified_head",
    "UpdateResult",
    "UpdateSettings",
    "UpdateTask",
    "first_order",
    "iau",
    "iterative",
    "second_order",
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
