import torch
import torch.nn as nn
import torch.nn.functional as F


class MyMultiHeadAttention(nn.Module):
    """Chinese-tutorial style; mistake: F.dropout without training=self.training."""

    def __init__(self, hidden_size, num_heads, attention_dropout=0.1):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = attention_dropout

    def forward(self, hidden_states, attention_mask=None):
        B, L, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        w = torch.matmul(q, k.transpose(2, 3)) / self.head_dim ** 0.5
        if attention_mask is not None:
            w = w + attention_mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = F.dropout(w, p=self.attention_dropout)
        out = torch.matmul(w, v).transpose(1, 2).reshape(B, L, -1)
        return self.o_proj(out), w
