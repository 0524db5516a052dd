"""NARM: a GRU reads the session, attention picks out its main purpose, a bilinear decoder scores items.

Li, Ren, Chen, Ren, Lian & Ma, "Neural Attentive Session-based Recommendation" (CIKM 2017); this module
implements the paper's equations and notes below where the official Theano code (lijingsdu/sessionRec_NARM)
does otherwise.

For a session x_1..x_t (its last L clicks at most):

    h_j  = GRU(dropout_0.25(E[x_j]), h_{j-1})          h_0 = 0,  j = 1..t
    c_g  = h_t                                         global encoder: the final state
    α_tj = vᵀ σ(A1 h_t + A2 h_j)                       σ the logistic sigmoid; A1, A2 [H, H], v [H]
    c_l  = Σ_j α_tj h_j                                local encoder: attention over every state
    c    = dropout_0.5([c_l ; c_g])                    [2H]
    s_i  = E[i] · B · c                                a score for every item i; B [D, 2H]

The input and output item embeddings are one table E [n_items, D], as in the official code (the paper
writes emb_i for both). No softmax or activation sits between the scores and the loss: the losses own
that choice (the paper's is a softmax cross-entropy over the whole catalogue).

Batches are padded *after* the clicks (left-aligned): row b holds its clicks at positions
0..lengths[b]-1 and anything at all after them. Since the GRU only looks backwards, its states at real
positions never see the padding; c_g is read at position lengths[b]-1 and the padding's α is zeroed, so a
padded row scores exactly as the session alone would. lengths must be >= 1.

Where the official code differs from the paper, this module follows the paper:
- the official attention uses hard_sigmoid and then renormalises α with a masked softmax over the
  positions; the paper's α is the raw vᵀσ(·), unnormalised, which is what is computed here;
- the official GRU's gates use hard_sigmoid and one bias vector; here torch's GRU (logistic gates, the
  paper's equations) with both of its bias vectors starting at zero.
Initialisation follows the official code: every matrix W of shape (fan, ·) in its layout, the item table
included, is drawn from N(0, 2 / fan) (its `init_weights`), the GRU's recurrent matrices are orthogonal
per gate, biases are zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class NARMConfig:
    n_items: int
    embedding_dim: int = 50  # D
    hidden_size: int = 100  # H
    max_len: int = 19  # L: a longer session is represented by its last L clicks (training and serving)
    dropout_embed: float = 0.25
    dropout_context: float = 0.5  # on c = [c_l ; c_g], before the decoder
    sparse_item_gradients: bool = False  # lookups give E a sparse gradient (rows used only), for SparseAdam

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError("max_len must be at least 1")


def _official_normal_(tensor: torch.Tensor, fan: int) -> None:
    nn.init.normal_(tensor, 0.0, math.sqrt(2.0 / fan))


class NARM(nn.Module):
    def __init__(self, config: NARMConfig):
        super().__init__()
        self.config = config
        d, h = config.embedding_dim, config.hidden_size
        self.item_embedding = nn.Parameter(torch.empty(config.n_items, d))  # E
        self.gru = nn.GRU(d, h, batch_first=True)
        self.attention_last = nn.Linear(h, h, bias=False)  # A1, applied to h_t
        self.attention_each = nn.Linear(h, h, bias=False)  # A2, applied to every h_j
        self.attention_vector = nn.Linear(h, 1, bias=False)  # v
        self.bilinear = nn.Linear(2 * h, d, bias=False)  # B [D, 2H]: its weight is B itself
        self.dropout_embed = nn.Dropout(config.dropout_embed)
        self.dropout_context = nn.Dropout(config.dropout_context)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d, h = self.config.embedding_dim, self.config.hidden_size
        # the official layout is x·W with W [fan, out]; torch stores W transposed, the fan is the same
        _official_normal_(self.item_embedding, self.config.n_items)
        for gate in self.gru.weight_ih_l0.chunk(3, dim=0):
            _official_normal_(gate, d)
        for gate in self.gru.weight_hh_l0.chunk(3, dim=0):
            nn.init.orthogonal_(gate)
        nn.init.zeros_(self.gru.bias_ih_l0)
        nn.init.zeros_(self.gru.bias_hh_l0)
        _official_normal_(self.attention_last.weight, h)
        _official_normal_(self.attention_each.weight, h)
        _official_normal_(self.attention_vector.weight, 1)  # official bl_vector is [1, H]
        _official_normal_(self.bilinear.weight, d)  # official bili is [D, 2H]

    # -- the session representation ----------------------------------------------------------------
    def attention(self, states: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """α [B, L]: vᵀσ(A1 h_t + A2 h_j) at real positions, 0 at padding. Training computes it at the real
        positions only (a random mini-batch is mostly padding, and A2 h_j was its largest product); the
        serving graph over the whole padded matrix, with no data-dependent shapes."""
        if self.training:
            rows, columns = mask.nonzero(as_tuple=True)
            alpha = self._alpha(self.attention_last(last)[rows], states[rows, columns])
            return states.new_zeros(mask.shape).index_put((rows, columns), alpha)
        return self._alpha(self.attention_last(last).unsqueeze(1), states).masked_fill(~mask, 0.0)

    def _alpha(self, projected_last: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.attention_vector(torch.sigmoid(projected_last + self.attention_each(states))).squeeze(-1)

    def encode(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """c = [c_l ; c_g] [B, 2H] (dropout included) for clicks items [B, L] padded after lengths [B]."""
        positions = torch.arange(items.shape[1], device=items.device)
        mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
        states = self.states(items.masked_fill(~mask, 0), lengths)  # padding: any id
        last_index = (lengths - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, states.shape[2])
        last = states.gather(1, last_index).squeeze(1)  # c_g = h_t
        alpha = self.attention(states, last, mask)
        local = torch.bmm(alpha.unsqueeze(1), states).squeeze(1)  # c_l = Σ_j α_tj h_j
        return self.dropout_context(torch.cat([local, last], dim=1))

    def states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """h_1..h_t [B, L, H] for clicks items [B, L], anything at padding (masked by the callers).

        In training the clicks are packed before their lookup and the GRU steps through the real clicks only:
        a random mini-batch is padded to its longest prefix, 19 on Diginetica, while the mean prefix is 4
        clicks, so looking up, dropping out and stepping through the padding was most of an epoch's work.
        The states are the same either way (the GRU only looks backwards); the serving graph keeps the plain
        padded GRU, which ONNX runs as one op."""
        if self.training:
            clicks = pack_padded_sequence(items, lengths.cpu(), batch_first=True,  # packing reads lengths on the host
                                          enforce_sorted=False)
            embedded = clicks._replace(data=self.dropout_embed(self.rows(clicks.data)))
            return pad_packed_sequence(self.gru(embedded)[0], batch_first=True, total_length=items.shape[1])[0]
        embedded = self.dropout_embed(self.rows(items))
        # h_0 explicit, shaped from the input: the exported graph keeps its batch size dynamic
        return self.gru(embedded, embedded.new_zeros(1, embedded.shape[0], self.config.hidden_size))[0]

    def query(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """B·c [B, D]: the vector every item embedding is scored against."""
        return self.bilinear(self.encode(items, lengths))

    # -- scoring -----------------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue for each session's next click, [B, n_items]."""
        return self.query(items, lengths) @ self.item_embedding.T

    def score_candidates(self, items: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Training forward on sampled candidates: scores [B, C] of the items `candidates` [C]."""
        return self.query(items, lengths) @ self.rows(candidates).T

    def rows(self, items: torch.Tensor) -> torch.Tensor:
        return F.embedding(items, self.item_embedding, sparse=self.config.sparse_item_gradients)
