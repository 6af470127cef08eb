"""A mistake: view(B, T, -1, num_heads) splits d_model into d_model/num_heads heads of
width num_heads, not num_heads heads of width d_k."""

import math

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

    def forward(self, x, mask=None):
        B, T, D = x.shape
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)  # (B, T, D)
        # (B, T, D) -> (B, T, heads, d_k) -> (B, heads, T, d_k)
        Q = Q.view(B, T, -1, self.num_heads).transpose(1, 2)  # the last axis is the head's width
        K = K.view(B, T, -1, self.num_heads).transpose(1, 2)
        V = V.view(B, T, -1, self.num_heads).transpose(1, 2)
        scores = Q @ K.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, heads, T, T)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))  # hide the future
        attn = F.softmax(scores, dim=-1)  # each query's weights over the keys
        out = attn @ V
        out = out.transpose(1, 2).contiguous().view(B, T, D)  # heads side by side again
        return self.W_O(out)
