"""Classes a newcomer wrote in the tutorials' styles, each with one mistake (or none) that an
earlier checker got wrong: the verdicts tests/test_check_attention.py expects are beside them."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    """The LLM book's constructor; mistake: F.dropout(w, p) with no training=, its required
    dropout argument given 0.0 by tinylm, so only a second build with dropout shows it."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim, self.p = d_out, num_heads, d_out // num_heads, dropout
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def heads(self, x, layer):
        b, n, _ = x.shape
        return layer(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.heads(x, self.W_query), self.heads(x, self.W_key), self.heads(x, self.W_value)
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:n, :n], -torch.inf)
        w = F.dropout(torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1), self.p)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, self.d_out))


class FilledThenScaled(MultiHeadAttention):
    """The LLM book's order (fill, then divide by √head_dim); mistake: filled with -3."""

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.heads(x, self.W_query), self.heads(x, self.W_key), self.heads(x, self.W_value)
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:n, :n], -3.0)
        w = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, self.d_out))


class SelfAttention(nn.Module):
    """nanoGPT's config object and fused path; mistake: dropout_p=self.dropout in eval mode too."""

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class ParameterHeads(nn.Module):
    """The ML book's (heads, d, d_head) Parameter matrices, its output Linear named `linear`;
    mistake: none (right)."""

    def __init__(self, d, h):
        super().__init__()
        self.dh = d // h
        self.U_query = nn.Parameter(torch.randn(h, d, d // h) / d ** 0.5)
        self.U_key = nn.Parameter(torch.randn(h, d, d // h) / d ** 0.5)
        self.U_value = nn.Parameter(torch.randn(h, d, d // h) / d ** 0.5)
        self.linear = nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (torch.einsum("btd,hde->bhte", x, U) for U in (self.U_query, self.U_key, self.U_value))
        omega = (q @ k.transpose(-2, -1) / self.dh ** 0.5).masked_fill(
            torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        return self.linear((omega.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, d))


class MyMultiHeadAttention(nn.Module):
    """The Chinese tutorial's names; mistake: head_dim written for 8 heads whatever n_head says."""

    def __init__(self, hidden_size, n_head):
        super().__init__()
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        self.linear_o = nn.Linear(hidden_size, hidden_size)
        self.head_dim = hidden_size // 8

    def forward(self, x):
        B, L, _ = x.shape
        q, k, v = (layer(x).view(B, L, -1, self.head_dim).transpose(1, 2)
                   for layer in (self.linear_q, self.linear_k, self.linear_v))
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool)), float("-inf"))
        return self.linear_o((scores.softmax(dim=-1) @ v).transpose(1, 2).contiguous().view(B, L, -1))
