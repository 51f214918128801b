"""scFoundation's cell-embedding path in plain torch, with the original parameter names.

The official checkpoint (``models.ckpt`` of biomap-research/scFoundation) holds a ``MaeAutobin``
whose encoder is a stack of ``nn.TransformerEncoderLayer``. Only three of its parts make a cell
embedding, and they are rebuilt here under the same names, so the checkpoint's tensors (after
its ``model.`` prefix) load with ``strict=True`` (154 tensors at the published size):

- ``token_emb``: the soft-binned *value* embedding (``AutoDiscretizationEmbedding2``);
- ``pos_emb``: one learned vector per gene position (the gene's row in the 19,264-gene list; the
  two total-count tokens T and S take positions 19,264 and 19,265);
- ``encoder``: ``transformer_encoder.{i}`` (post-LN ``nn.TransformerEncoderLayer``, ReLU,
  feed-forward 4 x hidden) and a final ``norm``.

The decoder (a Performer), ``decoder_embed``, ``norm`` and ``to_final`` only reconstruct
expression and are not needed. Pure torch, no I/O; loading lives in :mod:`scatd_core.foundation`.

Batching. The original embeds one cell at a time, so its ``[:, -1]`` (S token), ``[:, -2]`` (T
token) and the max/mean over genes never see padding. Here a batch holds cells of different
lengths, right-padded: S and T are read at each row's own last two real positions and the max
and mean are masked (:meth:`ScFoundationEncoder.pool`); padded keys are masked in attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ScFoundationConfig:
    """Sizes and special values of an scFoundation model (the merged config of ``models.ckpt``).

    ``seq_len`` counts the genes plus the two total-count tokens (19,264 + 2 for the published
    model). ``pad_token_id`` and ``mask_token_id`` are *values*: an input value exactly equal to
    one of them is embedded by the learned pad or mask vector, as in the original.
    """

    seq_len: int = 19266
    hidden_dim: int = 768
    depth: int = 12
    heads: int = 12
    bin_num: int = 100
    bin_alpha: float = 1.0
    pad_token_id: int = 103
    mask_token_id: int = 102
    ff_mult: int = 4
    norm_first: bool = False

    @property
    def n_genes(self) -> int:
        return self.seq_len - 2

    @property
    def embedding_dim(self) -> int:
        """Width of the ``pool_type='all'`` cell embedding: S, T, max and mean, each ``hidden_dim``."""
        return 4 * self.hidden_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScFoundationConfig":
        return cls(**{k: type(getattr(cls, k))(d[k]) for k in cls.__dataclass_fields__ if k in d})


class ValueEmbedding(nn.Module):
    """``token_emb``: each expression value becomes a softmax-weighted mix of ``bin_num`` vectors.

    ``h = LeakyReLU_0.1(mlp(v))``; ``w = softmax(bin_alpha * h + mlp2(h))``; ``emb = w @ emb.weight``.
    Values exactly equal to the mask / pad sentinels get ``emb_mask`` / ``emb_pad`` instead.
    """

    def __init__(self, dim: int, bin_num: int, bin_alpha: float, mask_value: float, pad_value: float):
        super().__init__()
        self.bin_alpha = float(bin_alpha)
        self.mask_value = float(mask_value)
        self.pad_value = float(pad_value)
        self.mlp = nn.Linear(1, bin_num)
        self.mlp2 = nn.Linear(bin_num, bin_num)
        self.emb = nn.Embedding(bin_num, dim)
        self.emb_mask = nn.Embedding(1, dim)
        self.emb_pad = nn.Embedding(1, dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` values -> ``[B, N, dim]`` embeddings."""
        h = F.leaky_relu(self.mlp(values.unsqueeze(-1)), 0.1)
        weight = torch.softmax(self.bin_alpha * h + self.mlp2(h), dim=-1)
        out = weight @ self.emb.weight.to(weight.dtype)
        out = torch.where((values == self.mask_value).unsqueeze(-1), self.emb_mask.weight[0].to(out.dtype), out)
        return torch.where((values == self.pad_value).unsqueeze(-1), self.emb_pad.weight[0].to(out.dtype), out)


class TransformerStack(nn.Module):
    """``encoder``: post-LN transformer layers (``transformer_encoder.{i}``) and a final ``norm``."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int, norm_first: bool):
        super().__init__()
        # dropout 0: identical in eval mode, and the attribution's gradients never see a dropout
        self.transformer_encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim * ff_mult, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.transformer_encoder:
            x = layer(x, src_key_padding_mask=padding_mask)
        return self.norm(x)


class ScFoundationEncoder(nn.Module):
    """The cell-embedding path of scFoundation (``token_emb``, ``pos_emb``, ``encoder``).

    Inputs are right-padded rows of the *expressed* genes of each cell, in gene-list order,
    followed by its T and S tokens:

    - ``values`` ``[B, N]``: the (log-normalised) values, then T, then S, then padding;
    - ``positions`` ``[B, N]``: the gene's row in the gene list, ``n_genes`` for T,
      ``n_genes + 1`` for S, anything valid for padding;
    - ``n_expressed`` ``[B]``: the number of genes of each row (T sits at ``n_expressed``).
    """

    def __init__(self, config: ScFoundationConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_emb = ValueEmbedding(c.hidden_dim, c.bin_num, c.bin_alpha, c.mask_token_id, c.pad_token_id)
        self.pos_emb = nn.Embedding(c.seq_len + 1, c.hidden_dim)
        self.encoder = TransformerStack(c.hidden_dim, c.depth, c.heads, c.ff_mult, c.norm_first)

    @staticmethod
    def padding_mask(n_expressed: torch.Tensor, length: int) -> torch.Tensor:
        """True at the padded positions of each row (after its genes, T and S)."""
        return torch.arange(length, device=n_expressed.device)[None, :] >= (n_expressed[:, None] + 2)

    def token_states(self, values: torch.Tensor, positions: torch.Tensor, n_expressed: torch.Tensor) -> torch.Tensor:
        """``[B, N, hidden]``: the encoder output of every token (padded positions are meaningless)."""
        x = self.token_emb(values) + self.pos_emb(positions).to(values.dtype)
        return self.encoder(x, self.padding_mask(n_expressed, values.shape[1]))

    @staticmethod
    def pool(states: torch.Tensor, n_expressed: torch.Tensor) -> torch.Tensor:
        """``pool_type='all'``: ``[S token, T token, max over genes, mean over genes]`` per row."""
        rows = torch.arange(states.shape[0], device=states.device)
        s_token = states[rows, n_expressed + 1]
        t_token = states[rows, n_expressed]
        genes = (torch.arange(states.shape[1], device=states.device)[None, :] < n_expressed[:, None]).unsqueeze(-1)
        largest = states.masked_fill(~genes, float("-inf")).amax(dim=1)
        mean = (states * genes).sum(dim=1) / n_expressed[:, None].to(states.dtype)
        return torch.cat([s_token, t_token, largest, mean], dim=1)

    def forward(self, values: torch.Tensor, positions: torch.Tensor, n_expressed: torch.Tensor) -> torch.Tensor:
        """The ``[B, 4 x hidden]`` cell embeddings."""
        return self.pool(self.token_states(values, positions, n_expressed), n_expressed)


def encoder_state_keys(config: ScFoundationConfig) -> list[str]:
    """The checkpoint keys (without ``model.``) the cell-embedding path needs, in module order."""
    with torch.device("meta"):
        return list(ScFoundationEncoder(config).state_dict())
