"""Where the global certificate loses against the attack: the Lipschitz constant's slack, and the network's curvature.

    python examples/bound_gap.py examples/models/mnist_l2.pt --norm 2 --eps 1.58 [--limit 1000]

For each correctly classified test input and its runner-up class j (the largest other logit):
- the global bound's constant L_yj (certify.bounds.lipschitz, the one `--bound global` uses), and the dual norm g of
  the gradient of z_y - z_j at the input (a lower bound of the true constant: g <= L_yj always, so g / L_yj is how
  tight the constant is where the data lie);
- the global certificate's radius min_k (z_y - z_k) / L_yk over every class k (certify.bounds.radius, without the
  float32 slack: `certify --bound global` can only be lower), the runner-up margin m = z_y - z_j over g (what a
  constant equal to the local gradient would give if the network were affine: no certificate, a yardstick), and the
  attack's verdict (PGD, margin loss) at eps.
It prints the fractions certified at eps by each, so the gap between the certificate and PGD splits into the part a
tighter constant could close (global -> first-order) and the part that lies in the network's nonlinearity
(first-order -> PGD). Every certified input also passes the yardstick (g <= L_yj)."""

import argparse

import torch

from certify.bounds.attacks import pgd
from certify.bounds.lipschitz import best_network_bound
from certify.bounds.radius import certified_radii
from contraction.errors import CNodeError
from nodes import load_dataset
from nodes.checkpoint import load_checkpoint, model_from_checkpoint, trained_dataset


def runner_up(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The largest logit other than the label's."""
    other = z.detach().clone()
    other[torch.arange(len(y)), y] = -torch.inf
    return other.argmax(1)


def gradient_dual_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, j: torch.Tensor,
                        norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins z_y - z_j at x and the dual norms of their input gradients (L1 for Linf inputs, L2 for L2)."""
    x = x.clone().requires_grad_(True)
    z = model(x)
    rows = torch.arange(len(y))
    m = z[rows, y] - z[rows, j]
    (grad,) = torch.autograd.grad(m.sum(), x)
    g = grad.flatten(1).abs().sum(1) if norm == "inf" else grad.flatten(1).norm(dim=1)
    return m.detach().double(), g.double()


def quantiles(t: torch.Tensor) -> str:
    q = torch.quantile(t, torch.tensor([0.1, 0.5, 0.9], dtype=t.dtype))
    return f"p10 {q[0]:.3g}, median {q[1]:.3g}, p90 {q[2]:.3g}, max {t.max():.3g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--norm", choices=["inf", "2"], default="2")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    try:
        payload = load_checkpoint(args.model)
        model = model_from_checkpoint(payload, args.model).eval()
        bound = best_network_bound(model, args.norm)
    except CNodeError as e:
        raise SystemExit(f"bound_gap: {e}")
    data = load_dataset(trained_dataset(payload), "test", data_root=args.data_root, limit=args.limit)
    x, y = data.tensors(0, len(data))
    L = bound.constants()
    ms, gs, ls, radii, robust = [], [], [], [], []
    for i in range(0, len(y), 250):
        xb, yb = x[i:i + 250], y[i:i + 250]
        with torch.no_grad():
            z = model(xb)
        keep = z.argmax(1) == yb
        if not bool(keep.any()):
            continue
        xb, yb = xb[keep], yb[keep]
        radii.append(certified_radii(z[keep], yb, L))
        j = runner_up(z[keep], yb)
        m, g = gradient_dual_norms(model, xb, yb, j, args.norm)
        adv = pgd(model, xb, yb, eps=args.eps, norm=args.norm, steps=args.pgd_steps, loss="margin")
        with torch.no_grad():
            robust.append(model(adv).argmax(1) == yb)
        ms.append(m), gs.append(g), ls.append(L[yb, j])
    if not ms:
        raise SystemExit("bound_gap: no test input is classified correctly")
    m, g, l, r, robust = torch.cat(ms), torch.cat(gs), torch.cat(ls), torch.cat(radii), torch.cat(robust)
    n = len(y)
    print(f"{args.model}: first {n} test images, {args.norm}-norm, eps {args.eps}; {len(m)} correct "
          f"({100 * len(m) / n:.2f} %)")
    print(f"block: {bound.method}, factor {bound.block_factor:.4g}; largest pairwise constant {float(L.max()):.4g}")
    print(f"gradient dual norm / L_yj (runner-up pair): {quantiles(g / l)}")
    if bool((g > l * (1 + 1e-6)).any()):
        print("WARNING: a gradient exceeds its certified constant: the bound is not sound for this model")
    rows = [("certified at eps by the global constant (radius >= eps)", r >= args.eps),
            ("first-order yardstick (m >= eps g, not a certificate)", m >= args.eps * g),
            (f"PGD-{args.pgd_steps} robust at eps (an upper bound of the robust accuracy)", robust)]
    for label, ok in rows:
        print(f"{label:<72} {100 * float(ok.sum()) / n:6.2f} %")


if __name__ == "__main__":
    main()
