"""The integrated-gradients path gradient of a frozen drug classifier, computed by hand.

:class:`~scatd_core.explain._attribution.Attributor` integrates in the space of the first
layer's outputs ``h`` (the path is a straight line there too). What remains per step is the rest
of the network forward and its gradient back to ``h``; autograd does that generically, this
module does it with the fewest matrix products, for the classifiers scATD builds
(:class:`~scatd_core.nn.models.DrugClassifier` and ensembles of them, frozen, binary):

- **Linear maps are merged** (exact up to float rounding, merged in float64): the latent mean is
  used only through the head's first layer, so ``fc21`` and ``bn3(fc3(.))`` are one map ``A``
  (``head_dim x hidden``); the last residual block's shortcut feeds only that map, so it is
  folded into it too, and the last block becomes one GEMM ``[fc, A . shortcut]``
  (Dist_VAE: 1,664 -> 359 + 210 instead of 1,664 -> 2 x 359, then 359 -> 421 -> 210).
- **Forward and backward by hand**, one GEMM per linear map and step chunk each way, with the
  activations' derivatives from the forward values (Swish: ``s + beta a (1 - s)`` with ``s`` the
  sigmoid and ``a`` the output; LeakyReLU: 1 or 0.01). The log-odds target is linear in the last
  layer, so its gradient there is a constant vector.
- **The map back to the inputs is smaller**: the first block's shortcut output reaches the
  output only through the next block's input map, so its share of the gradient, summed over
  steps, is ``(sum_s w_s g_next(s)) . W_next^T``, and ``W_next^T`` is folded into the
  shortcut's input weights once per model (:func:`_map_weights`; Dist_VAE maps 1,664 + 569
  values per cell back to the 19,264 genes instead of 3,328).

The result is ``sum_s w_s df/dx`` at the path points, the same numbers as autograd on the
model up to float32 rounding (tested in ``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import torch

from scatd_core.nn.layers import LeakyReLU, _cached, batch_norm_scale, foldable, linear_weight_effective

#: Interpolated rows (cells x steps) per forward/backward chunk: the chunk's activations stay in
#: the CPU cache between the GEMMs and the elementwise work.
ROWS_PER_CHUNK = 1024
LEAKY_SLOPE = 0.01


class _Act:
    """An activation and its derivative from the forward values."""

    def __init__(self, block):
        if hasattr(block, "swish"):
            self.beta = float(block.swish.beta.detach())
            self.leaky = False
        else:
            if not isinstance(block.act, LeakyReLU):
                raise TypeError("unknown activation")
            self.leaky = True

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(act(u), act'(u))``."""
        if self.leaky:
            slope = torch.where(u > 0, 1.0, LEAKY_SLOPE)
            return u * slope, slope
        s = torch.sigmoid(u * self.beta) if self.beta != 1.0 else torch.sigmoid(u)
        a = u * s
        # d/du u s(beta u) = s + beta u s (1 - s) = s + beta a (1 - s)
        return a, torch.addcmul(s, a, 1.0 - s, value=self.beta)


class _Member:
    """One frozen DrugClassifier's merged weights (all float32, contiguous, computed in float64)."""

    def __init__(self, model, offset: int, coefficient: float, target: str, positive: int):
        blocks = list(model.Encoder_resblocks)
        first = blocks[0]
        self.offset = offset
        self.m0 = first.fc.out_features
        self.acts = [_Act(b) for b in blocks]
        weights = _merged(model, target, positive)
        self.middle = weights["middle"]          # [(weight_t, bias, width_u)] of blocks 1 .. L-2
        self.last = weights["last"]              # (weight_t, bias, width_u) of block L-1 with A folded in, or None
        self.a = weights["a"]                    # head_dim x hidden: fc21 then bn3(fc3)
        self.c = weights["c"]
        self.v = weights["v"] * coefficient     # the target is Q . v + e (Q = head swish output)
        self.e = weights["e"] * coefficient
        self.head_beta = weights["head_beta"]
        self.next_weight_t = weights["next_weight_t"]  # the map the first block's output feeds into

    # ------------------------------------------------------------------ forward
    def forward(self, h: torch.Tensor, h_base: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The member's share of the target on every path point (``steps * cells`` rows,
        step-major) and what the backward pass needs."""
        o, m0 = self.offset, self.m0
        steps, n = alphas.shape[0], h.shape[0]
        u_b, d_b = h_base[:, o:o + m0], h_base[:, o + m0:o + 2 * m0]
        u = torch.addcmul(u_b, alphas[:, None, None], (h[:, o:o + m0] - u_b)[None]).reshape(steps * n, m0)
        a0, da0 = self.acts[0].forward(u)
        del u
        out = torch.addcmul(a0.view(steps, n, m0), alphas[:, None, None], (h[:, o + m0:o + 2 * m0] - d_b)[None])
        out = out.add_(d_b).reshape(steps * n, m0)
        del a0
        saved = {"da0": da0, "da": []}
        for (weight_t, bias, width), act in zip(self.middle, self.acts[1:]):
            y = torch.addmm(bias, out, weight_t)
            a, da = act.forward(y[:, :width])
            out = a.add_(y[:, width:])
            saved["da"].append(da)
        if self.last is not None:
            weight_t, bias, width = self.last
            y = torch.addmm(bias, out, weight_t)
            a, da = self.acts[-1].forward(y[:, :width])
            saved["da_last"] = da
            p = torch.addmm(y[:, width:], a, self.a.t())
        else:
            p = torch.addmm(self.c, out, self.a.t())
        if self.head_beta == 0.0:  # a linear head: swish(p) = p / 2
            q, saved["dq"] = p * 0.5, None
        else:
            s = torch.sigmoid(p * self.head_beta)
            q = p * s
            saved["dq"] = torch.addcmul(s, q, 1.0 - s, value=self.head_beta)
        return torch.addmv(self.e.expand(q.shape[0]), q, self.v), saved

    # ------------------------------------------------------------------ backward
    def backward(self, upstream: torch.Tensor, saved: dict, step_weights: torch.Tensor,
                 n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G_u0, G_next)``: ``sum_s w_s dT/du0`` (cells x m0) and ``sum_s w_s dT/d(next input
        map's output)`` (cells x width of that map), for per-row upstream gradients ``upstream``."""
        steps = step_weights.shape[0]
        g = upstream[:, None] * self.v[None, :]
        if saved["dq"] is not None:
            g = g.mul_(saved["dq"])
        else:
            g = g.mul_(0.5)
        if self.last is not None:
            weight_t = self.last[0]
            g_u = torch.mm(g, self.a).mul_(saved["da_last"])
            g_next = torch.cat([g_u, g], dim=1)
            g_out = torch.mm(g_next, weight_t.t())
        else:
            g_next = g
            g_out = torch.mm(g, self.a)
        for (weight_t, _, _), da in zip(reversed(self.middle), reversed(saved["da"])):
            g_next = torch.cat([g_out.mul(da), g_out], dim=1)
            g_out = torch.mm(g_next, weight_t.t())
        # the first block: u0 through its activation, the shortcut straight into g_out
        g_u0 = g_out.mul_(saved["da0"])
        w = step_weights
        g_u0 = torch.mv(g_u0.view(steps, n * self.m0).t(), w).view(n, self.m0)
        g_next = torch.mv(g_next.reshape(steps, -1).t(), w).view(n, -1)
        return g_u0, g_next


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _merged(model, target: str, positive: int) -> dict:
    """A member's merged float32 weights (see the module docstring), cached per weights version."""
    def build():
        blocks = list(model.Encoder_resblocks)
        w21, b21 = _f64(linear_weight_effective(model.fc21)), _f64(model.fc21.bias)
        scale, shift = batch_norm_scale(model.bn3)
        w3 = _f64(linear_weight_effective(model.fc3)) * _f64(scale)[:, None]
        b3 = _f64(model.fc3.bias) * _f64(scale) + _f64(shift)
        a = w3 @ w21
        c = w3 @ b21 + b3
        w4, b4 = _f64(linear_weight_effective(model.fc4)), _f64(model.fc4.bias)
        other = 1 - positive
        if target == "raw_logit":
            v, e = w4[positive], b4[positive]
        else:
            v, e = w4[positive] - w4[other], b4[positive] - b4[other]
        middle = []
        for block in blocks[1:-1]:
            weight_t, bias = block.fused_linear()
            middle.append((weight_t, bias, block.fc.out_features))
        last = None
        if len(blocks) >= 2:
            block = blocks[-1]
            weight_t, bias = (_f64(t) for t in block.fused_linear())
            m = block.fc.out_features
            w_cat = torch.cat([weight_t[:, :m], weight_t[:, m:] @ a.t()], dim=1)
            b_cat = torch.cat([bias[:m], bias[m:] @ a.t() + c])
            last = (w_cat.float().contiguous(), b_cat.float().contiguous(), m)
        if middle:
            next_w = middle[0][0]
        elif last is not None:
            next_w = last[0]
        else:
            next_w = a.t().float().contiguous()
        return {"middle": middle, "last": last, "a": a.float().contiguous(), "c": c.float().contiguous(),
                "v": v.float(), "e": e.float(), "head_beta": float(model.swish.beta.detach()),
                "next_weight_t": next_w}

    return _cached(model, f"explain_{target}_{positive}", build)


def _map_weights(model, next_weight_t: torch.Tensor) -> torch.Tensor:
    """``shortcut_input_weights . W_next``: input-major (inputs x width of the next map), so that
    ``G_next @ this.T`` is the first-block shortcut's share of the input gradient."""
    def build():
        weight_t, _, m0 = model.first_layer_weights()
        return (weight_t[:, m0:] @ next_weight_t).contiguous()

    return _cached(model, "explain_map", build)


def supported(model, target: str) -> bool:
    """Whether :class:`PathGradient` handles ``model`` (frozen, fusable blocks, a binary head with
    folded batch norm, Swish or LeakyReLU); otherwise autograd does the work."""
    from scatd_core.nn.ensemble import EnsembleClassifier
    from scatd_core.nn.models import DrugClassifier

    members = list(model.members) if isinstance(model, EnsembleClassifier) else [model]
    if not members or any(type(m) is not DrugClassifier for m in members):
        return False
    for m in members:
        if m.arch.class_num != 2 or not m.has_fused_first_layer() or not foldable(m.bn3):
            return False
        if m.training or any(p.requires_grad for p in m.parameters()):
            return False
        blocks = list(m.Encoder_resblocks)
        if any(not b.fusable for b in blocks):
            return False
        if any(not hasattr(b, "swish") and not isinstance(getattr(b, "act", None), LeakyReLU) for b in blocks):
            return False
    return target in ("logit", "raw_logit", "prob")


class PathGradient:
    """``sum_s w_s df/dx(x_s)`` on the IG path from the first layer's outputs (see the module
    docstring). ``h_base``: the first layer's output at the baseline (1 x width)."""

    def __init__(self, model, target: str, positive: int, h_base: torch.Tensor, alphas: torch.Tensor,
                 step_weights: torch.Tensor, rows_per_chunk: int = ROWS_PER_CHUNK):
        from scatd_core.nn.ensemble import EnsembleClassifier

        self.model, self.target = model, target
        self.h_base, self.alphas, self.step_weights = h_base, alphas, step_weights
        self.rows_per_chunk = int(rows_per_chunk)
        ensemble = isinstance(model, EnsembleClassifier)
        members = list(model.members) if ensemble else [model]
        k = len(members)
        self.members, self.models, offset = [], members, 0
        for m in members:
            self.members.append(_Member(m, offset, 1.0 / k if ensemble else 1.0, target, positive))
            offset += int(m.first_layer_weights()[0].shape[1])
        self.member_width = offset
        self.input_head = ensemble and model.input_weight is not None
        if self.input_head:
            c = model.arch.class_num
            coef = torch.zeros(k, c)
            coef[:, positive] = 1.0 / k
            if target != "raw_logit":
                coef[:, 1 - positive] = -1.0 / k
            self.input_coef = coef.reshape(-1).to(h_base.device)   # d target / d (input-head columns of h)
            self.input_weight_t = model.first_layer_weights()[0][:, offset:]
        self.maps = [_map_weights(m, mem.next_weight_t) if mem.last is not None or mem.middle else None
                     for m, mem in zip(members, self.members)]

    def input_gradient(self, h: torch.Tensor, with_factors: bool = False):
        """``sum_s w_s df/dx`` at the path points of the cells whose first-layer outputs are ``h``
        (cells x inputs, float32); with ``with_factors`` also its factors ``G`` (cells x
        :meth:`factor_width`): the gradient is ``G @ basis.T`` for the input-major basis whose
        rows :meth:`basis_rows` gives, so any input's gradient can be had again later from
        ``G`` alone (a few thousand values per cell instead of one per input)."""
        steps = self.alphas.shape[0]
        per_chunk = max(1, self.rows_per_chunk // steps)
        n = h.shape[0]
        parts = [[] for _ in self.members]
        upstream_sums = []
        for s in range(0, n, per_chunk):
            hc = h[s:s + per_chunk]
            nc = hc.shape[0]
            outs = [mem.forward(hc, self.h_base, self.alphas) for mem in self.members]
            if self.target == "prob":
                t = sum(o[0] for o in outs)
                if self.input_head:
                    hin = hc[:, self.member_width:]
                    hb = self.h_base[:, self.member_width:]
                    path = torch.addcmul(hb, self.alphas[:, None, None], (hin - hb)[None]).reshape(steps * nc, -1)
                    t = t + path @ self.input_coef
                sig = torch.sigmoid(t)
                upstream = sig * (1 - sig)
            else:
                upstream = torch.ones(steps * nc, dtype=h.dtype, device=h.device)
            for i, (mem, (_, saved)) in enumerate(zip(self.members, outs)):
                parts[i].append(mem.backward(upstream, saved, self.step_weights, nc))
            upstream_sums.append(torch.mv(upstream.view(steps, nc).t(), self.step_weights))
        grad, factors = None, []
        for mem, model, mapped, chunks in zip(self.members, self.models, self.maps, parts):
            g_u0 = torch.cat([c[0] for c in chunks])
            g_next = torch.cat([c[1] for c in chunks])
            weight_t = model.first_layer_weights()[0]
            fc_t = weight_t[:, :mem.m0]
            grad = torch.mm(g_u0, fc_t.t()) if grad is None else grad.addmm_(g_u0, fc_t.t())
            if mapped is not None:
                grad.addmm_(g_next, mapped.t())
            else:  # one block: the shortcut feeds A directly
                g_d0 = torch.mm(g_next, mem.next_weight_t.t())
                grad.addmm_(g_d0, weight_t[:, mem.m0:2 * mem.m0].t())
            factors += [g_u0, g_next]
        if self.input_head:
            weights = torch.cat(upstream_sums)[:, None] * self.input_coef[None, :]
            grad.addmm_(weights, self.input_weight_t.t())
            factors.append(weights)
        return (grad, torch.cat(factors, dim=1)) if with_factors else grad

    def factor_width(self) -> int:
        """Columns of the factors :meth:`input_gradient` gives."""
        width = sum(mem.m0 + mem.next_weight_t.shape[1] for mem in self.members)
        return width + (self.input_coef.numel() if self.input_head else 0)

    def basis_rows(self, inputs: torch.Tensor) -> torch.Tensor:
        """Rows ``inputs`` of the basis of the factors (len(inputs) x :meth:`factor_width`)."""
        pieces = []
        for mem, model, mapped in zip(self.members, self.models, self.maps):
            weight_t = model.first_layer_weights()[0]
            pieces.append(weight_t[inputs, :mem.m0])
            if mapped is not None:
                pieces.append(mapped[inputs])
            else:  # g_next . N^T . S^T = g_next . (S N)^T
                pieces.append(weight_t[inputs, mem.m0:2 * mem.m0] @ mem.next_weight_t)
        if self.input_head:
            pieces.append(self.input_weight_t[inputs])
        return torch.cat(pieces, dim=1)

