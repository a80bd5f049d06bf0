"""Use the contraction regularizers in your own plain PyTorch loop, on your own slope-restricted vector field.

A dense neural ODE x' = sigma(W x + b) integrated by 5 Euler steps fits a toy regression target while the weight
hinge pushes every Euler step to a certified factor 1 - h rho; the certified Euler factor is printed before and after.

    python examples/regularize_your_own_loop.py
"""

import torch
from torch import nn

from contraction import BlockSpec, block_certificates, get_activation, jacobian_hinge, weight_hinge

torch.manual_seed(0)
act = get_activation("smooth_leaky_relu", 0.1)
layer = nn.Linear(16, 16)
h, steps, rho = 0.2, 5, 0.3  # a rate the Euler step carries: rho < a / (h b) = 0.5


def flow(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    states = [x]
    for _ in range(steps):
        x = x + h * act(layer(x))
        states.append(x)
    return x, states


def certified_factor() -> float:
    spec = BlockSpec((layer.weight.detach()[:, :, None, None],) * steps, act.a, act.b, h, "euler", "zeros", 1, 1)
    return min(c.factor for c in block_certificates(spec, norms=("inf", "inf_weighted")))


x_data = torch.randn(256, 16)
target = torch.tanh(x_data @ torch.randn(16, 16) * 0.3)
opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
print(f"certified Euler factor (inf-norm family) before: {certified_factor():.4f}")
for it in range(300):
    out, states = flow(x_data)
    fit = (out - target).pow(2).mean()
    # both hinges target the Euler step as run (factor <= 1 - h rho); target="flow" gives the continuous flow's
    reg = weight_hinge([layer], act, rho=rho, norm="inf", h=h) + jacobian_hinge(layer, act, states[2], rho=rho,
                                                                              norm="inf", h=h)
    loss = fit + 0.05 * reg
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it % 100 == 0:
        print(f"step {it}: fit {fit.item():.4f}, regularizer {reg.item():.4f}")
print(f"certified Euler factor (inf-norm family) after:  {certified_factor():.4f}  (< 1 means contracting)")
