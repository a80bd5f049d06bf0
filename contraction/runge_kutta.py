"""Explicit Runge-Kutta steps as torchdiffeq runs them, and their weight-only Lipschitz factors (docs/METHOD.md section 14).

One step of size h of x' = f(x) with the tableau (A, b): stages Y_i = x + h sum_{j<i} a_ij f(Y_j), then
x+ = x + h sum_i b_i f(Y_i). For the field f(x) = sigma(T x + c), every Jacobian of f is D T with D diagonal in
[a, b] (the activation's slopes), so the step's Jacobian is J = I + h sum_i b_i D_i T G_i with G_i = dY_i/dx =
I + h sum_{j<i} a_ij D_j T G_j. Every tableau here has b_i >= 0 and sum b_i = 1, so sum_i b_i D_i is again a
diagonal D in [a, b] and, in any induced norm,

    ||J|| <= E(h) + h L sum_i b_i e_i,    e_1 = 0,  e_i = h L sum_{j<i} |a_ij| (1 + e_j)  (>= ||G_i - I||),

with E(h) the Euler step's weight-only factor sup_D ||I + h D T|| and L >= sup_D ||D T||: the Euler factor plus a
term of order (h L)^2 (`rk_step_factor`). Heun's method (torchdiffeq's 'heun2') is also a convex combination of
two Euler steps (Shu-Osher form: x+ = x/2 + (y1 + h f(y1))/2, y1 = x + h f(x)), so its factor is at most
(1 + E(h)^2) / 2, contractive whenever the Euler step is (`shu_osher_factor`); the smaller bound is taken. By the
mean-value inequality a bound on ||J|| at every state is a Lipschitz factor of the step in that norm."""

from __future__ import annotations

from dataclasses import dataclass

from contraction.errors import CNodeError

__all__ = ["Tableau", "TABLEAUS", "rk_step_factor", "shu_osher_factor", "step_factor"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta tableau: `a[i]` the weights of stage i on the earlier stages (a[0] is empty),
    `b` the weights of the update; `shu_osher`: the step is a convex combination of Euler steps of size h
    (Heun: x+ = x/2 + E_h(E_h(x))/2), so its factor is bounded by the same combination of Euler factors."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    shu_osher: bool = False

    def __post_init__(self) -> None:
        if len(self.a) != len(self.b) or any(len(row) != i for i, row in enumerate(self.a)):
            raise CNodeError(f"tableau {self.name!r}: a must be strictly lower triangular with one row per b")
        if any(w < 0 for w in self.b) or abs(sum(self.b) - 1.0) > 1e-12:
            raise CNodeError(f"tableau {self.name!r}: the factor bound needs b >= 0 summing to 1")

    @property
    def stages(self) -> int:
        return len(self.b)


TABLEAUS: dict[str, Tableau] = {t.name: t for t in (
    Tableau("euler", ((),), (1.0,)),
    Tableau("midpoint", ((), (0.5,)), (0.0, 1.0)),
    Tableau("heun2", ((), (1.0,)), (0.5, 0.5), shu_osher=True),
    Tableau("heun3", ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    # torchdiffeq's 'rk4' runs the 3/8 rule (rk4_alt_step_func), not the classic tableau
    Tableau("rk4", ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
)}
"""The fixed-step solvers of torchdiffeq that a ConvNODE block runs, with the tableaus torchdiffeq uses."""


def rk_step_factor(tableau: Tableau, h: float, euler: float, lip: float) -> float:
    """E(h) + h L sum_i b_i e_i (module docstring): `euler` = E(h), the Euler step's factor at step h in the norm;
    `lip` = L, a bound of ||D T|| over the slopes in the same norm."""
    if h <= 0 or lip < 0 or euler < 0:
        raise CNodeError(f"need h > 0, L >= 0 and E >= 0, got h={h}, L={lip}, E={euler}")
    e: list[float] = []
    for row in tableau.a:
        e.append(h * lip * sum(abs(w) * (1.0 + e[j]) for j, w in enumerate(row)))
    return euler + h * lip * sum(w * ei for w, ei in zip(tableau.b, e))


def shu_osher_factor(tableau: Tableau, euler: float) -> float | None:
    """(1 + E(h)^2) / 2 for Heun's method (a convex combination of the identity and two Euler steps); None for
    tableaus not written in that form here."""
    return (1.0 + euler * euler) / 2.0 if tableau.shu_osher else None


def step_factor(solver: str, h: float, euler: float, lip: float) -> float:
    """The smallest proven Lipschitz factor of one step of `solver` (see the module docstring)."""
    if solver not in TABLEAUS:
        raise CNodeError(f"no weight-only factor for solver {solver!r}; fixed-step solvers: {list(TABLEAUS)}")
    tableau = TABLEAUS[solver]
    bounds = [rk_step_factor(tableau, h, euler, lip)]
    so = shu_osher_factor(tableau, euler)
    if so is not None:
        bounds.append(so)
    return min(bounds)
