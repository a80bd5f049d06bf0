"""ConvNODE classifier: normalisation -> stem convs -> ODE block -> head, on images [B, C, S, S] in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from contraction.errors import CNodeError
from nodes.aol import apply_lipschitz_layers
from nodes.block import ODEBlock
from nodes.config import ModelConfig

__all__ = ["ConvNODE"]


class ConvNODE(nn.Module):
    """logits = head(ODE block(stem((u - mean) / std))).

    stem: convs, each followed by sigma; head: flatten (`readout='avgpool'`: average over pixels first), then the
    hidden linear layers, each followed by sigma, then the linear layer to the classes. With
    `config.lipschitz_layers='aol'` the stem convs' and hidden layers' weights are AOL-parametrized (nodes.aol)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation = config.act
        cin = config.in_channels
        convs = []
        for out, k, stride, pad in config.stem or ():
            convs.append(nn.Conv2d(cin, out, k, stride=stride, padding=pad, padding_mode=config.padding))
            cin = out
        self.stem = nn.ModuleList(convs)
        self.block = ODEBlock(config)
        dims = [config.features, *config.head, config.num_classes]
        self.head = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:]))
        apply_lipschitz_layers([*self.stem, *self.head[:-1]], config.lipschitz_layers)

    @property
    def readout(self) -> nn.Linear:
        """The head's first linear layer (the wide one, on the flattened or averaged final state)."""
        return self.head[0]

    def _check_input(self, u: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if not isinstance(u, torch.Tensor) or u.dim() != 4 or tuple(u.shape[1:]) != want:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise CNodeError(f"expected input of shape [B, {want[0]}, {want[1]}, {want[2]}], got {got}")

    def embedding(self, u: torch.Tensor) -> torch.Tensor:
        """x0: the normalised input through the stem (each conv followed by sigma)."""
        self._check_input(u)
        x = u
        if self.config.mean:  # in the input's dtype, from the config's exact values
            mean = torch.tensor(self.config.mean, dtype=u.dtype, device=u.device).view(1, -1, 1, 1)
            x = (u - mean) / torch.tensor(self.config.std, dtype=u.dtype, device=u.device).view(1, -1, 1, 1)
        for conv in self.stem:
            x = self.activation(conv(x))
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a final state: flatten (or average over pixels), hidden layers with sigma, last linear."""
        x = x.flatten(1) if self.config.readout == "linear" else x.mean(dim=(2, 3))
        for layer in self.head[:-1]:
            x = self.activation(layer(x))
        return self.head[-1](x)

    def trajectory(self, u: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the ODE states x_0, ..., x_N visited (the regularizers sample these)."""
        states = self.block.trajectory(self.embedding(u))
        return self.classify(states[-1]), states

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.trajectory(u)[0]
