"""A mistake: the mask hides the diagonal too (triu with diagonal=0), so the first
position sees no key at all and its softmax over nothing but -inf is NaN."""

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

    def forward(self, x):
        B, T, D = x.shape
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)  # (B, T, D)
        # (B, T, D) -> (B, T, heads, d_k) -> (B, heads, T, d_k)
        Q = Q.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        K = K.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        V = V.view(B, T, self.num_heads, self.d_k).transpose(1, 2)
        scores = Q @ K.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, heads, T, T)
        hide = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=0)  # the diagonal too
        scores = scores.masked_fill(hide, float("-inf"))
        attn = F.softmax(scores, dim=-1)  # each query's weights over the keys
        out = attn @ V
        out = out.transpose(1, 2).contiguous().view(B, T, D)  # heads side by side again
        return self.W_O(out)
