"""The certified lm_head mode: a strongly convex edit of an untied output head, with its residual bound.

With the body frozen, the hidden states x are fixed features and the logits Wx
are linear in the head W, so cross-entropy is convex in W; an L2 term
(μ/2)‖W − W₀‖² makes it μ-strongly convex. For such an objective F any W
satisfies ‖W − W*‖ ≤ ‖∇F(W)‖/μ, W* its exact minimiser (Guo et al. 2020;
Warnecke et al. report the residual): the update comes with a certificate.

The objective is the training loss on the corrected data D′ as far as the head
sees it:

    F(W) = Σ_r w_r ℓ(W x_r, y_r)  +  Σ_s ℓ(W x_s, y_s)  −  ⟨B, W⟩  +  (μ/2)‖W − W₀‖²

r: next-token positions of the retain text (training text), weighted so they
sum to the training-set token count c (settings.train_tokens, default the
retain sample's); s: the substitute's tokens in every corrected occurrence z̃.
The removed occurrences z are not convex to subtract, so their loss enters
linearised at W₀, inside the tilt B = ∇[Σ_r w_r ℓ_r + Σ_z ℓ_z](W₀), which also
makes W₀ the exact minimiser of the same objective on the *original* data.
Hence ∇F(W₀) = Σ∇ℓ(z̃) − Σ∇ℓ(z) = g, the paper's substitute-gradient
difference, and the first Newton step is the paper's second-order update
restricted to the head. F is minimised by Newton-CG with exact Hessian products
(for a linear head the GGN is the Hessian).

A tied head (GPT-2's, SmolLM2's: the head is the input embedding, so the
features move with W) is refused by `certifiable_lm_head`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .objective import encode_with_spans
from .residual import certifiable_lm_head, certified_bound
from .solvers import inverse_hvp, top_eigenvalue
from .task import UpdateResult, UpdateSettings, UpdateTask, relative_rise

RELATIVE_L2 = 1e-3
"""μ = RELATIVE_L2 × top eigenvalue of the unregularised objective's Hessian at W₀, when settings.l2 is None."""

MAX_NEWTON = 20
GRADIENT_TOL = 1e-8
"""Newton-CG stops when ‖∇F‖ ≤ GRADIENT_TOL·‖∇F(W₀)‖."""


@dataclass
class HeadObjective:
    """F of the module doc over the head matrix Θ = [W | b] (bias column only if the head has one)."""

    features: torch.Tensor  # [n, d(+1)] float64
    targets: torch.Tensor  # [n] long
    weights: torch.Tensor  # [n] float64
    tilt: torch.Tensor  # B, [V, d(+1)]
    anchor: torch.Tensor  # Θ₀
    mu: float
    has_bias: bool

    def _probs(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.features @ theta.t(), dim=-1)

    def value(self, theta: torch.Tensor) -> float:
        logits = self.features @ theta.t()
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, self.targets[:, None]).squeeze(-1)
        reg = 0.5 * self.mu * float((theta - self.anchor).pow(2).sum())
        return float((self.weights * nll).sum()) - float((self.tilt * theta).sum()) + reg

    def loss_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """∇ of the weighted cross-entropy part alone."""
        p = self._probs(theta)
        p[torch.arange(len(self.targets)), self.targets] -= 1.0
        return (p * self.weights[:, None]).t() @ self.features

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        return self.loss_gradient(theta) - self.tilt + self.mu * (theta - self.anchor)

    def hessian(self, theta: torch.Tensor, *, mu: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """V ↦ (∇²F)V = Σ w (diag p − ppᵀ)(V x) xᵀ + μV at ``theta``, closed form (softmax computed once)."""
        p = self._probs(theta)
        lam = self.mu if mu is None else mu

        def product(v: torch.Tensor) -> torch.Tensor:
            u = self.features @ v.t()
            s = p * u - p * (p * u).sum(-1, keepdim=True)
            return (s * self.weights[:, None]).t() @ self.features + lam * v

        return product

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, *, mu: float | None = None) -> torch.Tensor:
        return self.hessian(theta, mu=mu)(v)


def _head_rows(task: UpdateTask, body, texts, spans) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden state, next token) at every scored position of ``texts`` (the secret/substitute span)."""
    device = next(task.model.parameters()).device
    enc = encode_with_spans(task.tokenizer, texts, spans, "secret", device)
    hidden = body(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    rows, cols = enc.loss_mask.nonzero(as_tuple=True)
    return hidden[rows, cols], enc.input_ids[:, 1:][rows, cols]


@torch.no_grad()
def build_head_objective(task: UpdateTask, settings: UpdateSettings, *, retain_blocks: int = 16) -> HeadObjective:
    """Features from the frozen body, the tilt B at the current head, μ from settings (or relative)."""
    from scrubber.measure.exposure.head import model_parts

    if task.retain_blocks is None:
        raise ValueError("certified-head needs retain data (--retain-data or --eval-data)")
    sel = certifiable_lm_head(task.model)
    parts = model_parts(task.model)
    if not parts.split or parts.head is None or parts.body is None:
        raise ValueError("certified-head needs a model whose logits are exactly lm_head(hidden state)")
    head = parts.head
    has_bias = getattr(head, "bias", None) is not None
    blocks = task.retain_blocks[:retain_blocks].to(head.weight.device)
    h_r = parts.body(input_ids=blocks).last_hidden_state[:, :-1].reshape(-1, head.weight.shape[1])
    y_r = blocks[:, 1:].reshape(-1)
    h_s, y_s = _head_rows(task, parts.body, [p.substitute for p in task.pairs], [p.sub_span for p in task.pairs])
    h_o, y_o = _head_rows(task, parts.body, [p.original for p in task.pairs], [p.span for p in task.pairs])

    def aug(h: torch.Tensor) -> torch.Tensor:
        h = h.double()
        return torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1) if has_bias else h

    theta0 = head.weight.detach().double()
    if has_bias:
        theta0 = torch.cat([theta0, head.bias.detach().double()[:, None]], 1)
    c = float(settings.train_tokens) if settings.train_tokens else float(task.retain_blocks.numel())
    w_r = torch.full((len(y_r),), c / len(y_r), dtype=torch.float64, device=theta0.device)
    ones = lambda n: torch.ones(n, dtype=torch.float64, device=theta0.device)  # noqa: E731
    x_r, x_s, x_o = aug(h_r), aug(h_s), aug(h_o)
    original = HeadObjective(torch.cat([x_r, x_o]), torch.cat([y_r, y_o]), torch.cat([w_r, ones(len(y_o))]),
                             torch.zeros_like(theta0), theta0, 0.0, has_bias)
    tilt = original.loss_gradient(theta0)
    obj = HeadObjective(torch.cat([x_r, x_s]), torch.cat([y_r, y_s]), torch.cat([w_r, ones(len(y_s))]),
                        tilt, theta0, 0.0, has_bias)
    if settings.l2 is not None:
        mu = float(settings.l2)
    else:
        h0 = obj.hessian(theta0, mu=0.0)
        flat = lambda v: h0(v.view_as(theta0)).reshape(-1)  # noqa: E731
        mu = RELATIVE_L2 * max(top_eigenvalue(flat, theta0.reshape(-1), iters=20), 1e-12)
    if not mu > 0:
        raise ValueError(f"certified-head needs an L2 strength mu > 0, got {mu}")
    obj.mu = mu
    del sel
    return obj


def minimise(obj: HeadObjective, *, max_newton: int = MAX_NEWTON, tol: float = GRADIENT_TOL,
             cg_iter: int = 100) -> tuple[torch.Tensor, list[dict]]:
    """Inexact Newton-CG with backtracking from Θ₀: F is strongly convex, so this converges to W*.

    CG's tolerance follows the forcing sequence min(0.1, sqrt(‖∇F‖/‖∇F(Θ₀)‖)) (Eisenstat-Walker
    style): loose far from W*, where a precise Newton step is wasted, tight near it.
    """
    theta = obj.anchor.clone()
    g = obj.gradient(theta)
    g0 = float(g.norm())
    trail = [{"newton": 0, "gradient_norm": g0, "value": obj.value(theta)}]
    for k in range(1, max_newton + 1):
        ratio = float(g.norm()) / max(g0, 1e-300)
        if ratio <= tol:
            break
        shape = theta.shape
        h = obj.hessian(theta)
        step, info = inverse_hvp(lambda v: h(v.view(shape)).reshape(-1), g.reshape(-1),
                                 max_iter=cg_iter, tol=min(0.1, ratio ** 0.5))
        step = step.view(shape)
        f0, slope, a = obj.value(theta), -float((g * step).sum()), 1.0
        while a > 1e-8 and obj.value(theta - a * step) > f0 + 1e-4 * a * slope:
            a /= 2
        theta = theta - a * step
        g = obj.gradient(theta)
        trail.append({"newton": k, "gradient_norm": float(g.norm()), "value": obj.value(theta), "step": a,
                      "cg_iterations": info.iterations})
    return theta, trail


def certified_head(task: UpdateTask, settings: UpdateSettings) -> UpdateResult:
    """Update only the untied lm_head to the minimiser of F; report ‖∇F‖ and the bound ‖W − W*‖ ≤ ‖∇F‖/μ.

    Whatever the task's selection, only the head moves (the certificate is about the head
    alone). If the utility bound on the tune blocks breaks, the head is restored and the
    result says so: the bound is a promise, the certificate no excuse.
    """
    from scrubber.measure.exposure.head import model_parts

    start = time.perf_counter()
    obj = build_head_objective(task, settings)
    theta, trail = minimise(obj)
    head = model_parts(task.model).head
    r0 = task.retain_value()
    before = head.weight.detach().clone(), (head.bias.detach().clone() if obj.has_bias else None)
    with torch.no_grad():
        w = theta[:, :-1] if obj.has_bias else theta
        head.weight.copy_(w.to(head.weight.dtype))
        if obj.has_bias:
            head.bias.copy_(theta[:, -1].to(head.bias.dtype))
    residual = float(obj.gradient(theta).norm())
    rise = relative_rise(r0, task.retain_value())
    bound_hit = rise > settings.max_retain_increase
    if bound_hit:
        with torch.no_grad():
            head.weight.copy_(before[0])
            if obj.has_bias:
                head.bias.copy_(before[1])
    exposures = task.exposures()
    return UpdateResult(
        "certified-head", time.perf_counter() - start, damping=obj.mu, steps=len(trail) - 1,
        gradient_residual=residual,
        extra={"certified_bound": certified_bound(residual, obj.mu), "mu": obj.mu,
               "bound_meaning": "‖W − W*‖ (Frobenius) ≤ ‖∇F(W)‖/μ, W* the exact minimiser of the strongly convex head objective",
               "n_parameters_updated": theta.numel(), "move_norm": float((theta - obj.anchor).norm()),
               "retain_rise": rise, "utility_bound_hit": bound_hit, "restored": bound_hit,
               "target_met": bool(exposures) and max(exposures.values()) <= settings.aim and not bound_hit,
               "history": trail, "objective_rows": int(len(obj.targets))},
    )
