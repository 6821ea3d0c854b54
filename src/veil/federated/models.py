"""Models shipped with veil. Any ``torch.nn.Module`` works; these four cover the scenarios.

They avoid batch normalisation (per-sample gradients and DP-SGD need layers that treat each
example on its own) and the fused LSTM kernel (which ``torch.func.vmap`` cannot batch): the
character LSTM is written with linear layers, so a cohort of clients can train it together.

A model whose output has one column is a binary classifier trained with the logistic loss;
with ``C >= 2`` columns, a ``C``-class classifier trained with cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CharLSTM", "LogisticRegression", "Mlp", "SmallCnn"]


class LogisticRegression(nn.Module):
    """One linear layer: binary (``classes=1``, a single logit) or multinomial."""

    def __init__(self, in_features: int, classes: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


class Mlp(nn.Module):
    """Fully connected layers with ReLU."""

    def __init__(self, in_features: int, classes: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.flatten(1))
        return out


class SmallCnn(nn.Module):
    """Two 3x3 convolutions with max-pooling, then a linear layer; for square grey images."""

    def __init__(self, image_size: int, classes: int, channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Linear(c2 * side * side, classes)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.image_size, self.image_size)
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


class CharLSTM(nn.Module):
    """Next-character prediction: embedding, one LSTM layer, a linear layer on the last state.

    Input: ``(batch, length)`` character indices; output: ``(batch, vocabulary)`` logits.
    """

    def __init__(self, vocabulary: int, embedding: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.input_gates = nn.Linear(embedding, 4 * hidden)
        self.hidden_gates = nn.Linear(hidden, 4 * hidden, bias=False)
        self.out = nn.Linear(hidden, vocabulary)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x.long())
        gates_in = self.input_gates(e)  # all time steps at once
        h = torch.zeros(x.shape[0], self.hidden, dtype=e.dtype)
        c = torch.zeros_like(h)
        for t in range(x.shape[1]):
            gates = gates_in[:, t] + self.hidden_gates(h)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        logits: torch.Tensor = self.out(h)
        return logits
