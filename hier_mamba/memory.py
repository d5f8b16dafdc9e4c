"""Attention over a short memory of past H states (Transformer-XL-style history across cycles).

At each H update the new z_H also attends, at the same position, to the M most recent earlier
z_H values (earlier H cycles of this forward and, through the carry, earlier ACT segments). The
attention is per position over M slots, so per-token cost and state are O(M d), independent of
the sequence length, and the layer is causal whenever the H stack is. Gradient reaches the stored
states directly wherever they are still on the autograd tape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm


class HMemoryAttention(nn.Module):
    """z + out_proj(softmax(q k^T / sqrt(d_head)) v), queries from z, keys/values from the memory.

    z: (..., d); memory: (..., M, d) -> (..., d). The output projection starts at zero, so a fresh
    model computes exactly what it would without memory.
    """

    def __init__(self, hidden_size: int, num_heads: int, eps: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"h_memory_heads={num_heads} must divide hidden_size={hidden_size}")
        self.num_heads = num_heads
        self.norm_q = RMSNorm(hidden_size, eps=eps)
        self.norm_kv = RMSNorm(hidden_size, eps=eps)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.kv_proj = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.out_proj.zero_init = True  # read by HierMambaPreTrainedModel._init_weights
        nn.init.zeros_(self.out_proj.weight)

    def forward(self, z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # 1. Project: one query per position, M keys and values per position.
        q = self.q_proj(self.norm_q(z)).unflatten(-1, (self.num_heads, -1)).unsqueeze(-2)  # (..., heads, 1, dh)
        k, v = self.kv_proj(self.norm_kv(memory)).chunk(2, dim=-1)  # (..., M, d) each
        k = k.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # (..., heads, M, dh)
        v = v.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # (..., heads, M, dh)
        # 2. Attend over the M slots of the same position.
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(-2).flatten(-2)  # (..., d)
        # 3. Residual write.
        return z + self.out_proj(attended)
