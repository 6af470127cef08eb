"""A mistake: the causal mask is a buffer built for 32 positions. Checked at T=7 it
is right; training with a context of 64 fails at the first step."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        assert d_model % num_heads == 0
        self.num_heads = num_heads
        self.d_k = d_model // num_heads  # each head's width
        self.W_Q = nn.Linear(d_model, d_model)
        self.W_K = nn.Linear(d_model, d_model)
        self.W_V = nn.Linear(d_model, d_model)
        self.W_O = nn.Linear(d_model, d_model)
        self.register_buffer("tril", torch.tril(torch.ones(32, 32)))  # the context it was written for

    def forward(self, x):
        B, T, D = x.shape
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)  # (B, T, D)
        # (B, T, D) -> (B, T, heads, d_k) -> (B, heads, T, d_k)
        Q = Q.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        K = K.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        V = V.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        scores = Q @ K.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, heads, T, T)
        scores = scores.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        attn = F.softmax(scores, dim=-1)  # each query's weights over the keys
        out = attn @ V
        out = out.transpose(1, 2).contiguous().view(B, T, D)  # heads side by side again
        return self.W_O(out)
