import torch
import torch.nn as nn


class SelfAttentionParams(nn.Module):
    """The ML book's nn.Parameter matrices (W @ x style), one head; mistake: masked with 0.0."""

    def __init__(self, d):
        super().__init__()
        self.U_query = nn.Parameter(torch.rand(d, d))
        self.U_key = nn.Parameter(torch.rand(d, d))
        self.U_value = nn.Parameter(torch.rand(d, d))

    def forward(self, x):
        T = x.size(1)
        queries = (self.U_query @ x.transpose(1, 2)).transpose(1, 2)
        keys = (self.U_key @ x.transpose(1, 2)).transpose(1, 2)
        values = (self.U_value @ x.transpose(1, 2)).transpose(1, 2)
        omega = queries @ keys.transpose(1, 2)
        hide = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        omega = omega.masked_fill(hide, 0.0)
        weights = torch.softmax(omega / x.size(-1) ** 0.5, dim=-1)
        return weights @ values
