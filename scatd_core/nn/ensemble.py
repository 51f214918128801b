"""An ensemble of drug classifiers that predicts with the mean of their class logits.

scATD models trained here are ensembles: ``K`` backbones pretrained from different seeds, each
with its own drug head (:class:`EnsembleClassifier`). Every member is a
:class:`~scatd_core.nn.models.DrugClassifier` in the original key layout; a member may also add
a linear function of the model input to its class logits (``input_weight``), for heads that see
the standardised genes next to the latent.

Weights are saved *stacked*: every key of the member layout holds a tensor with a leading
member axis (``fc21.weight_orig`` of shape ``[K, z, h]``), plus ``input_weight`` of shape
``[K, classes, inputs]`` when there is one. Slice ``k`` of the stacked tensors is member
``k``'s original-layout ``state_dict`` (:func:`unstack_state`).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from scatd_core.nn.models import Architecture, DrugClassifier
from scatd_core.nn.sparse import sparse_linear

INPUT_WEIGHT = "input_weight"


def stack_states(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stacked form of member ``state_dict`` s that share one layout (leading member axis)."""
    keys = list(states[0])
    if any(list(s) != keys for s in states[1:]):
        raise ValueError("ensemble members must share one key layout")
    return {k: torch.stack([s[k] for s in states]) for k in keys}


def unstack_state(state: Mapping[str, torch.Tensor], n_members: int) -> tuple[list[dict], torch.Tensor | None]:
    """Member ``state_dict`` s (views of the stacked tensors) and the stacked input weight (or None)."""
    members: list[dict] = [{} for _ in range(n_members)]
    for key, value in state.items():
        if key == INPUT_WEIGHT:
            continue
        if value.ndim == 0 or value.shape[0] != n_members:
            raise ValueError(f"{key} has shape {tuple(value.shape)}; expected a leading axis of {n_members} members")
        for k in range(n_members):
            members[k][key] = value[k]
    return members, state.get(INPUT_WEIGHT)


class EnsembleClassifier(nn.Module):
    """``arch.members`` drug classifiers; class logits are the mean of the members' logits.

    The ensemble's latent is the members' latent means side by side (``arch.latent_dim`` wide),
    so :meth:`encode` / :meth:`classifier` split the prediction at the latent like a single
    :class:`~scatd_core.nn.models.DrugClassifier` does. Member ``k``'s logits are
    ``head_k(mu_k) + input_weight[k] @ x`` (the second term only with ``arch.input_head``).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        if not arch.members or arch.members < 1:
            raise ValueError("an ensemble needs arch.members >= 1")
        self.arch = arch
        member = arch.member()
        self.members = nn.ModuleList(DrugClassifier(member) for _ in range(arch.members))
        if arch.input_head:
            self.input_weight = nn.Parameter(torch.zeros(arch.members, arch.class_num, arch.input_dim))
        else:
            self.input_weight = None

    @property
    def n_members(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ stacked weights
    def stacked_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the saved form (members stacked; see the module docstring)."""
        state = stack_states([m.state_dict() for m in self.members])
        if self.input_weight is not None:
            state[INPUT_WEIGHT] = self.input_weight.detach()
        return state

    def load_stacked_state_dict(self, state: Mapping[str, torch.Tensor], assign: bool = False) -> None:
        """Load the saved form strictly: every member slice must match the member layout."""
        members, input_weight = unstack_state(state, self.n_members)
        for member, member_state in zip(self.members, members):
            member.load_state_dict(member_state, strict=True, assign=assign)
        if (input_weight is None) != (self.input_weight is None):
            raise ValueError(f"{INPUT_WEIGHT} is {'missing' if input_weight is None else 'unexpected'}")
        if input_weight is not None:
            if tuple(input_weight.shape) != tuple(self.input_weight.shape):
                raise ValueError(f"{INPUT_WEIGHT} has shape {tuple(input_weight.shape)}; expected "
                                 f"{tuple(self.input_weight.shape)}")
            if assign:
                self.input_weight = nn.Parameter(input_weight, requires_grad=self.input_weight.requires_grad)
            else:
                with torch.no_grad():
                    self.input_weight.copy_(input_weight)

    # ------------------------------------------------------------------ prediction
    def _latents(self, z: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(z, self.arch.z_dim, dim=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' ``(mu, logvar)`` side by side: ``[n, members * z_dim]`` each."""
        parts = [m.encode(x) for m in self.members]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def input_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The heads' term of the model input ``x``, ``[members, n, classes]`` (``None`` when the
        members do not see it): the same for every latent draw of a cell, so sample mode computes it
        once per batch and passes it to :meth:`classifier`."""
        if self.input_weight is None:
            return None
        if x.layout != torch.strided:
            x = x.to_dense()
        return torch.einsum("kci,ni->knc", self.input_weight.to(x.dtype), x)

    def member_logits(self, z: torch.Tensor, x: torch.Tensor | None = None,
                      input_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Each member's class logits, ``[members, n, classes]``, from the ensemble latent ``z``
        (and the model input ``x``, needed when the members see it, or its :meth:`input_logits`)."""
        logits = torch.stack([m.classifier(zk) for m, zk in zip(self.members, self._latents(z))])
        if self.input_weight is not None:
            if input_logits is None:
                if x is None:
                    raise ValueError("this ensemble's heads also take the model input x")
                input_logits = self.input_logits(x)
            logits = logits + input_logits
        return logits

    def classifier(self, z: torch.Tensor, x: torch.Tensor | None = None,
                   input_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits: the mean of the members' logits."""
        return self.member_logits(z, x, input_logits).mean(dim=0)

    def forward(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.encode(x)
        z = DrugClassifier.reparameterize(mu, logvar, generator) if sample else mu
        return self.classifier(z, x)

    # ------------------------------------------------------------------ first layer (explain)
    def has_fused_first_layer(self) -> bool:
        return all(m.has_fused_first_layer() for m in self.members)

    def first_layer_weights(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(weight_t, bias, width)``: the members' fused first layers side by side (input-major,
        as :meth:`DrugClassifier.first_layer_weights`), then the input weights, so ``x @ weight_t +
        bias`` holds everything through which the input enters the ensemble; ``width`` is the
        members' part."""
        parts = [m.first_layer_weights() for m in self.members]
        ws = [p[0] for p in parts]
        bs = [p[1] for p in parts]
        width = sum(int(p[0].shape[1]) for p in parts)
        if self.input_weight is not None:
            w_in = self.input_weight.detach().reshape(-1, self.arch.input_dim).t()
            ws.append(w_in.to(ws[0].dtype))
            bs.append(torch.zeros(w_in.shape[1], dtype=bs[0].dtype, device=bs[0].device))
        return torch.cat(ws, dim=1), torch.cat(bs), width

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        weight_t, bias, _ = self.first_layer_weights()
        if x.layout != torch.strided:
            return sparse_linear(x, weight_t, bias)
        return torch.addmm(bias.to(x.dtype), x, weight_t.to(x.dtype))

    def logits_from_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        """Class logits from :meth:`first_layer`'s output ``h``."""
        widths = [int(m.first_layer_weights()[0].shape[1]) for m in self.members]
        chunks = torch.split(h, widths + [h.shape[1] - sum(widths)], dim=1)
        logits = torch.stack([m.classifier(m.encode_first_layer_output(hk)[0])
                              for m, hk in zip(self.members, chunks)])
        if self.input_weight is not None:
            logits = logits + chunks[-1].reshape(h.shape[0], self.n_members, -1).transpose(0, 1)
        return logits.mean(dim=0)
