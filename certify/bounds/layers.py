"""The bound engine's layer types. A classifier is a sequence of them; each type implements its rules once:

- `__call__`: the forward map (float64 copies for certification, live weights for training);
- `lipschitz(norm)`: a proven Lipschitz factor in the Linf or L2 norm (differentiable in the weights);
- `interval(lo, hi)`: interval arithmetic (IBP): a box of the output (and of the pre-activation, for nonlinear
  layers) over the input box, nothing else: the fast rule of certified training;
- `bounds(box, interval)`: a box of the output (and of the pre-activation, for nonlinear layers) over the input box,
  keeping a centre point run through the exact layer (the mean-value enclosures of the Euler steps use it);
- `backward(lam, const, pre, rows)`: carry a linear lower bound `lam . output + const` back to the layer's input
  (CROWN-style), with the sound relaxation `k z + lower <= sigma(z) <= k z + upper` on each neuron's interval (row r
  of lam belongs to input rows[r]). The relaxation's slope does not depend on the sign of lam, so a pass may carry
  the rows of lam and of -lam at once: `const` then holds 2R entries for R rows, those of lam's rows and then those
  of their negations (a paired pass, certify.bounds.backsub; `accumulate` adds each constant term to both);
- `symbolic(s, pre, concretize)`: carry a linear enclosure `x = A u + c + r * delta` (|delta| <= 1) of the layer's
  input in terms of the network's input u forward to its output (forward linear relaxation: the intermediate
  bounds of certify.bounds.linear), for nonlinear layers through the same relaxation on the pre-activation's interval
  (its symbolic range over the input set, `concretize`, met with the box `pre`);
- `export(g, x)`: the layer as run, written into a graph builder `g` (certify.export: ONNX nodes; `x` and the result
  are the builder's values, which add and scale by floats);
- `roundoff(lo, hi, pre, err, ball)`: the float32 rule: a bound of |fl32(layer)(x^) - layer(x)| for every x in the
  box [lo, hi] (the exact network's values over the input set) and every float32 x^ with |x^ - x| <= err, the layer
  as PyTorch runs it in float32 (contraction.floats' error model; certify.bounds.roundoff carries it to the logits),
  returned with the layer's own part (the same without the incoming err carried through the layer); `ball`
  (optional, L2 sets): (centre, radius [B]), an L2 ball that also holds every x, for the magnitudes the own error is
  proportional to (Cauchy-Schwarz on the offset: ||row||_2 against the box's ||row||_1);

Affine layers (Normalize, Conv, Flatten, Linear) share their interval and backward rules through four primitives:
the linear part `apply`, `apply_abs` (|A| r), `adjoint` (A^T y) and the bias."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import math

import torch

from contraction.convops import (apply_conv, apply_conv_adjoint, apply_conv_columns, apply_conv_general, apply_conv_general_adjoint,
                                 centre_taps, conv_general_spectral_norm_tensor, conv_singular_range,
                                 conv_spectral_norm_tensor, largest_singular_value)
from contraction.errors import CNodeError, norm_error
from contraction.floats import TINY, UNIT, gamma
from contraction.runge_kutta import Tableau, combine, stage_factors, step_factor, tableau_step
from contraction.slopes import Activation
from contraction.weights import euler_factor_2, euler_factor_inf, euler_row_gain, gradient_factor_2, gradient_row_gain
from certify.bounds.relax import Relaxation, SlopedBox, relax, relaxation

__all__ = ["Box", "Symbolic", "columns", "Layer", "Affine", "Normalize", "Conv", "Flatten", "Linear", "Act", "FieldStep",
           "EulerStep", "GradientStep", "RKStep", "STEP_LAYERS", "take", "row_dot", "accumulate", "constant_rounding"]

Pre = tuple[torch.Tensor, torch.Tensor] | None
Ball = tuple[torch.Tensor, torch.Tensor] | None
"""An L2 ball (centre [B, ...], radius [B]) holding a layer's exact input over the set (`roundoff`)."""


@dataclass(frozen=True)
class Box:
    """lo <= x <= hi elementwise over the input set, and a point `centre` of the set's image (lo <= centre <= hi)."""

    lo: torch.Tensor
    hi: torch.Tensor
    centre: torch.Tensor

    @property
    def radius(self) -> torch.Tensor:
        """Largest deviation from the centre inside the box, per coordinate."""
        return torch.maximum(self.centre - self.lo, self.hi - self.centre).clamp_min(0.0)


@dataclass(frozen=True)
class Symbolic:
    """x = A u + c + r * delta for every input u of the set, with some |delta| <= 1 (elementwise): the linear part
    `A` [*shape, B, n] (the columns last: one per input coordinate and image), the offset `c` and the error radius
    `r` >= 0 [B, *shape]."""

    A: torch.Tensor
    c: torch.Tensor
    r: torch.Tensor


def columns(t: torch.Tensor) -> torch.Tensor:
    """A per-input tensor [B, *shape] laid out to scale the columns of a linear part: [*shape, B, 1]."""
    return t.movedim(0, -1).unsqueeze(-1)


Concretize = Callable[[Symbolic], tuple[torch.Tensor, torch.Tensor]]


def meet(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection of two enclosures of the same set (an equal-width guard against round-off crossings)."""
    lo, hi = torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])
    return lo, torch.maximum(hi, lo)


def _sum_but_first(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows `rows` of a per-input tensor `t`, broadcast instead of copied when there is one input."""
    return t if t.shape[0] == 1 else t[rows]


def row_dot(lam: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[R]: sum_j lam[r, j] t[rows[r], j] in t's dtype; `rows=None`: t holds one output without the batch dimension
    (e.g. a bias map), the same for every row. One matrix-vector product where t is the same for every row."""
    flat = lam.flatten(1).to(t.dtype)
    if rows is None:
        return flat @ t.expand(lam.shape[1:]).reshape(-1)
    if t.shape[0] == 1:
        return flat @ t.reshape(-1)
    return (flat * t.flatten(1)[rows]).sum(1)


def accumulate(const: torch.Tensor, linear: torch.Tensor, gap: torch.Tensor | None = None) -> torch.Tensor:
    """const + linear - gap, per row: `linear` changes sign with lam, `gap` (>= 0) does not; in a paired pass (const
    with 2R entries for R rows) the negated rows get -linear - gap."""
    if const.shape[0] != linear.shape[0]:
        linear = torch.cat([linear, -linear])
        gap = None if gap is None else torch.cat([gap, gap])
    return const + linear if gap is None else const + linear - gap


def constant_rounding(t: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """(w, c0) with |fl32(lam . fl32(t)) - lam . t| <= |lam| . w + c0 for float32 rows lam: a constant's dot product
    over n terms taken in the rows' dtype (`row_dot`: t rounded to float32, n products, n - 1 sums in any order),
    w = gamma_{n+1} |t|, c0 = n TINY for underflow."""
    return gamma(n + 1) * t.abs(), n * TINY


class Layer:
    """Interface of a layer of the bound engine (see the module docstring)."""

    nonlinear = False
    bounds_are_interval = False  # `bounds` gives the box `interval` gives on the same input box

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lipschitz(self, norm: str) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        raise NotImplementedError

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        raise NotImplementedError

    def pre_lipschitz(self, norm: str) -> torch.Tensor:
        """A Lipschitz factor of the map from the layer's input to its pre-activation (sigma's: the identity)."""
        return torch.ones((), dtype=torch.float64)

    def backward(self, lam: torch.Tensor, const: torch.Tensor, pre: Pre,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        raise NotImplementedError

    def export(self, g: Any, x: Any) -> Any:
        raise NotImplementedError

    def roundoff(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                 ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(own, out): bounds of the layer's own float32 error at inputs within err of the box [lo, hi] (pre: the
        pre-activation's box over it; ball: an L2 ball that also holds the exact inputs, None: unknown), and of
        |fl32 output - exact output| there, that own error plus the incoming err carried through the layer; one
        evaluation of the shared parts."""
        raise NotImplementedError

    def pre_error(self, err: torch.Tensor) -> torch.Tensor | None:
        """A nonlinear layer: how far its exact pre-activation moves when its input moves by at most err (None: no
        such rule; certify.bounds.roundoff.Float32Terms)."""
        return None

    def backward_rounding(self, x: torch.Tensor, pre: Pre) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`backward` run on float32 rows (the constant in float64): (w, c0) with |rho| . |x'| <= |lam| . w + c0 for
        every row lam, rho the float32 error of the functional it returns on the layer's input and |x'| <= x that
        input's magnitude (per input; w of the output's shape, c0 [B]); None: no such rule (the rows stay float64)."""
        return None


def _magnitude(lo: torch.Tensor, hi: torch.Tensor, err: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The largest |x^| with x in [lo, hi] and |x^ - x| <= err."""
    return torch.maximum(lo.abs(), hi.abs()) + err


class Affine(Layer):
    """z = A x + bias; subclasses give `apply` (A x), `apply_abs` (|A| r), `adjoint` (A^T y), `bias_map`, and
    `terms`: the length of the float32 sums that compute one output as run (products, bias and any separate add)."""

    bounds_are_interval = True

    @property
    def terms(self) -> int:
        raise NotImplementedError

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_abs(self, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias_map(self) -> torch.Tensor | None:
        """The bias broadcast to one output (None: no bias)."""
        raise NotImplementedError

    def row_norms(self) -> torch.Tensor:
        """Upper bounds of the 2-norm of each output's row of A (broadcast to one output)."""
        raise NotImplementedError

    def magnitude_row_norms(self) -> torch.Tensor:
        """Upper bounds of the 2-norm of each output's row of the magnitude map `apply_abs` (the products' |a| that
        the float32 error model sums; the rows of |A| unless a layer sums several products into one entry)."""
        return self.row_norms()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias_map()
        z = self.apply(x)
        return z if b is None else z + b

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """Exact range of each output over the box: A mid + b +- |A| rad."""
        z, r = self(0.5 * (lo + hi)), self.apply_abs(0.5 * (hi - lo))
        return (z - r, z + r), None

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        """The interval rule (exact for an affine map), with the centre carried through."""
        (lo, hi), _ = self.interval(box.lo, box.hi)
        return Box(lo, hi, self(box.centre)), None

    def ball_bounds(self, u: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box of the outputs over the L2 ball ||u' - u|| <= eps (eps [B] broadcast): A u + b +- eps ||row||."""
        z = self(u)
        e = eps.reshape(-1, *[1] * (z.dim() - 1)) * self.row_norms()
        return z - e, z + e

    def backward(self, lam: torch.Tensor, const: torch.Tensor, pre: Pre,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.bias_map()
        if b is not None:
            const = accumulate(const, row_dot(lam, b.to(lam.dtype)).to(const.dtype))
        return self.adjoint(lam), const

    @property
    def adjoint_terms(self) -> int:
        """The length of the sums of A^T lam (products per input coordinate)."""
        raise NotImplementedError

    def backward_rounding(self, x: torch.Tensor, pre: Pre) -> tuple[torch.Tensor, torch.Tensor]:
        """|fl(A^T lam) - A^T lam| <= gamma_m |A|^T |lam| (m = `adjoint_terms`, any order) plus m TINY per entry for
        underflow: (gamma_m |A| x, m TINY sum x), and the bias's dot product in float32 (`constant_rounding`)."""
        m = self.adjoint_terms
        w, c0 = gamma(m) * self.apply_abs(x), m * TINY * _sum_but_first(x)
        b = self.bias_map()
        if b is None:
            return w, c0
        out = w.shape[1:]
        wb, cb = constant_rounding(b.to(w.dtype).expand(out), math.prod(out))
        return w + wb, c0 + cb

    def apply_columns(self, A: torch.Tensor) -> torch.Tensor:
        """The linear part applied to every column of A [*in_shape, B, n] -> [*out_shape, B, n] (generic path:
        the columns as a batch; layers override it with a columns-last product)."""
        B, n = A.shape[-2:]
        out = self.apply(A.flatten(-2).movedim(-1, 0))
        return out.movedim(0, -1).unflatten(-1, (B, n))

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        """Exact for the linear part; the error box through |A|."""
        return Symbolic(self.apply_columns(s.A), self(s.c), self.apply_abs(s.r)), None

    def rounding(self, lo: torch.Tensor, hi: torch.Tensor, err: torch.Tensor | float = 0.0,
                 ball: Ball = None) -> torch.Tensor:
        """The float32 evaluation's own error at inputs |x^| <= |x| + err: gamma_n (|A| |x^| + |b|) + n TINY, n = `terms`
        (any summation order), x in the box [lo, hi]; where x also lies in an L2 ball, the smaller of that and
        `ball_rounding`'s."""
        n = self.terms
        if n == 0:
            return torch.zeros_like(self.apply_abs(lo))
        b = self.bias_map()
        size = self.apply_abs(_magnitude(lo, hi, err))
        own = gamma(n) * (size if b is None else size + b.abs()) + n * TINY
        if ball is not None:
            own = torch.minimum(own, self.ball_rounding(*ball, err if torch.is_tensor(err) else torch.full_like(lo, err)))
        return own

    def roundoff(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                 ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
        """|A x^ + b computed - (A x + b)| <= |A| err + the evaluation's own error (`rounding` over the box, the
        smaller of it and `ball_rounding` where a ball is given)."""
        own = self.rounding(lo, hi, err, ball)
        return own, self.apply_abs(err) + own

    def ball_rounding(self, centre: torch.Tensor, radius: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """`rounding` over inputs in the L2 ball ||x - centre||_2 <= radius ([B]), |x^ - x| <= err: Cauchy-Schwarz
        on the offset, sum_j |A_ij| |x_j| <= (|A| |centre|)_i + ||A_i||_2 radius, instead of the box's corners
        (||A_i||_1 against ||A_i||_2: sqrt(n) apart on a dense row)."""
        n = self.terms
        if n == 0:
            return torch.zeros_like(self.apply_abs(centre))
        b = self.bias_map()
        size = self.apply_abs(centre.abs() + err)
        size = size + radius.reshape(-1, *[1] * (size.dim() - 1)) * self.magnitude_row_norms()
        return gamma(n) * (size if b is None else size + b.abs()) + n * TINY


@dataclass(frozen=True, eq=False)
class Normalize(Affine):
    """z = (u - mean) / std per channel (mean, std: [C, 1, 1])."""

    mean: torch.Tensor
    std: torch.Tensor
    terms = 2  # (u - mean) / std: a subtraction and a division

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.std

    def apply_abs(self, r: torch.Tensor) -> torch.Tensor:
        return r / self.std

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.std

    @property
    def adjoint_terms(self) -> int:
        return 1

    def apply_columns(self, A: torch.Tensor) -> torch.Tensor:
        return A / self.std[..., None, None]

    def bias_map(self) -> torch.Tensor:
        return -self.mean / self.std

    def row_norms(self) -> torch.Tensor:
        return 1.0 / self.std

    def lipschitz(self, norm: str) -> torch.Tensor:
        return (1.0 / self.std).max()

    def export(self, g: Any, x: Any) -> Any:
        return g.normalize(x, self.mean, self.std)


@dataclass(frozen=True, eq=False)
class Conv(Affine):
    """z = T(K) x + b: kernel [C_out, C_in, k, k], stride, padding width and mode (as nn.Conv2d), input side `size`.

    Stride-1 same-size convs with odd k use the adjoint-by-flipped-kernel fast path of contraction.convops."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    pad: int
    padding: str
    size: int

    @property
    def terms(self) -> int:
        """C_in k^2 products, the bias and one more add (a bias added after the conv, as the gradient field does)."""
        return self.weight[0].numel() + 2

    @property
    def same(self) -> bool:
        k = self.weight.shape[-1]
        return self.stride == 1 and k % 2 == 1 and self.pad == k // 2

    def _conv(self, x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        if self.same:
            return apply_conv(x, K, self.padding)
        return apply_conv_general(x, K, self.stride, self.pad, self.padding)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight)

    def apply_abs(self, r: torch.Tensor) -> torch.Tensor:
        """|T(K)| r with |K| taken tap by tap (>= the true |T| r when taps wrap onto each other)."""
        return self._conv(r, self.weight.abs())

    def apply_columns(self, A: torch.Tensor) -> torch.Tensor:
        B, n = A.shape[-2:]
        out = apply_conv_columns(A.flatten(-2), self.weight, self.stride, self.pad, self.padding)
        return out.unflatten(-1, (B, n))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        K = self.weight.to(y.dtype)  # float32 rows: the float32 weights as run (exact)
        if self.same:
            return apply_conv_adjoint(y, K, self.padding)
        return apply_conv_general_adjoint(y, K, self.stride, self.pad, self.padding, self.size)

    @property
    def adjoint_terms(self) -> int:
        return math.prod(self.weight.shape[i] for i in (0, 2, 3))

    def bias_map(self) -> torch.Tensor:
        return self.bias[:, None, None]

    def row_norms(self) -> torch.Tensor:
        """The 2-norm of each output channel's row: the kernel's, with taps that circular padding wraps onto the same
        pixel (kernel wider than the input) summed first (their row entry is the sum)."""
        return self._wrapped_row_norms(self.weight)

    def magnitude_row_norms(self) -> torch.Tensor:
        """As `row_norms` for |K|: wrapped taps are separate products, their magnitudes add (|w_a| + |w_b|, not
        |w_a + w_b|)."""
        return self._wrapped_row_norms(self.weight.abs())

    def _wrapped_row_norms(self, K: torch.Tensor) -> torch.Tensor:
        k = K.shape[-1]
        if self.padding == "circular" and k > self.size:
            idx = torch.arange(k, device=K.device) % self.size
            K = K.new_zeros((*K.shape[:2], k, self.size)).index_add(3, idx, K)
            K = K.new_zeros((*K.shape[:2], self.size, self.size)).index_add(2, idx, K)
        return K.flatten(1).norm(dim=1)[:, None, None]

    def diagonal(self) -> torch.Tensor:
        """The diagonal of T(K) at every pixel, [C, 1, 1]: the centre taps (square stride-1 same convs)."""
        return centre_taps(self.weight)[:, None, None]

    def lipschitz(self, norm: str) -> torch.Tensor:
        """Linf: the largest absolute row sum over output pixels (exact, borders included); L2: a DFT bound."""
        if norm == "inf":
            ones = torch.ones(1, self.weight.shape[1], self.size, self.size, dtype=self.weight.dtype,
                              device=self.weight.device)
            return self.apply_abs(ones).amax()
        if norm == "2":
            if self.same:
                return conv_spectral_norm_tensor(self.weight, self.size, self.size, self.padding)
            return conv_general_spectral_norm_tensor(self.weight, self.size, self.stride, self.pad, self.padding)
        raise norm_error(norm)

    def export(self, g: Any, x: Any) -> Any:
        return g.conv(x, self.weight, self.bias, self.stride, self.pad, self.padding)

    def transposed(self) -> "Conv":
        """T(K)^T as a conv without bias (square stride-1 same convs: the flipped, transposed kernel, same padding)."""
        if not self.same:
            raise CNodeError("only stride-1 same-size convs have a same-size transposed conv")
        K = self.weight.flip(-1, -2).transpose(0, 1)
        return Conv(K, torch.zeros(K.shape[0], dtype=K.dtype, device=K.device), 1, self.pad, self.padding, self.size)

    def mix(self, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> "Conv":
        """The conv G_out T(K) (G_in (x) I) for channel matrices G_out [C_out, C_out], G_in [C_in, C_in]."""
        K, b = self.weight, self.bias
        if out is not None:
            K, b = torch.einsum("oj,jiuv->oiuv", out, K), out @ b
        if inp is not None:
            K = torch.einsum("ojuv,ji->oiuv", K, inp)
        return Conv(K, b, self.stride, self.pad, self.padding, self.size)


@dataclass(frozen=True, eq=False)
class Flatten(Affine):
    """[B, C, H, W] -> [B, C*H*W] (channel-major)."""

    shape: tuple[int, int, int]
    terms = 0  # a reshape: exact
    adjoint_terms = 0

    def backward_rounding(self, x: torch.Tensor, pre: Pre) -> tuple[torch.Tensor, torch.Tensor]:
        """A reshape is exact."""
        return torch.zeros_like(x.flatten(1)), torch.zeros_like(x.flatten(1)[:, 0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    apply_abs = apply

    def apply_columns(self, A: torch.Tensor) -> torch.Tensor:
        return A.flatten(0, len(self.shape) - 1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def bias_map(self) -> None:
        return None

    def row_norms(self) -> torch.Tensor:
        return torch.ones(())

    def export(self, g: Any, x: Any) -> Any:
        return g.flatten(x)

    def lipschitz(self, norm: str) -> torch.Tensor:
        return torch.ones((), dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class Linear(Affine):
    """z = W x + c on flat inputs (W [out, in]); `sums`: the length of the float32 sums as run, when not in + 2 (a
    pixel average folded into W: the average's sum and division, then the linear layer's)."""

    weight: torch.Tensor
    bias: torch.Tensor
    sums: int | None = None

    @property
    def terms(self) -> int:
        return self.weight.shape[1] + 2 if self.sums is None else self.sums

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def apply_abs(self, r: torch.Tensor) -> torch.Tensor:
        return r @ self.weight.abs().T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.weight.to(y.dtype)

    @property
    def adjoint_terms(self) -> int:
        return self.weight.shape[0]

    def apply_columns(self, A: torch.Tensor) -> torch.Tensor:
        return (self.weight @ A.flatten(1)).unflatten(1, A.shape[1:])

    def bias_map(self) -> torch.Tensor:
        return self.bias

    def row_norms(self) -> torch.Tensor:
        return self.weight.norm(dim=1)

    def lipschitz(self, norm: str) -> torch.Tensor:
        """Linf: the largest absolute row sum (exact); L2: the largest singular value."""
        if norm == "inf":
            return self.weight.abs().sum(1).amax()
        if norm == "2":
            return largest_singular_value(self.weight)
        raise norm_error(norm)

    def export(self, g: Any, x: Any) -> Any:
        return g.gemm(x, self.weight, self.bias)

    def mix(self, inp: torch.Tensor, channels: int) -> "Linear":
        """W (G_in (x) I) for a channel matrix G_in [C, C] on a channel-major flattened input of `channels`."""
        W = self.weight.reshape(self.weight.shape[0], channels, -1)
        return Linear(torch.einsum("ojp,ji->oip", W, inp).reshape(self.weight.shape), self.bias, self.sums)


def _relaxed(act: Activation, lam: torch.Tensor, pre: Pre, rows: torch.Tensor,
             const: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lam . sigma(z) >= (lam k) . z + const' on the box `pre`: returns (lam k, const') per row, const' = const +
    lam . mid - |lam| . half (the relaxation's offsets' midpoint and half-gap: lam+ . lower + lam- . upper), the dot
    products in lam's dtype (float32 rows: their rounding is in each layer's `backward_rounding`), the constant in
    the dtype of `const` (float64 for float32 rows, certify.bounds.backsub); paired passes as `accumulate`."""
    assert pre is not None
    r = relaxation(act, pre)
    if isinstance(pre, SlopedBox):  # the rows' own lower lines where lam > 0, the chord where lam < 0
        assert const.shape[0] == lam.shape[0], "a SlopedBox's lines differ by sign: no paired pass"
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        g = pos * pre.slopes.to(lam.dtype) + neg * take(r.slope.to(lam.dtype), rows)
        return g, const + ((pos * pre.offsets).flatten(1).sum(1) + row_dot(neg, r.upper, rows)).to(const.dtype)
    mid, half = _mid_half(r, lam.dtype)
    return lam * take(r.slope.to(lam.dtype), rows), accumulate(const, row_dot(lam, mid, rows).to(const.dtype),
                                                               row_dot(lam.abs(), half, rows).to(const.dtype))


def _mid_half(r: Relaxation, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The relaxation's offsets as midpoint and half-gap: lam+ . lower + lam- . upper = lam . mid - |lam| . half."""
    return (0.5 * (r.upper + r.lower)).to(dtype), (0.5 * (r.upper - r.lower)).to(dtype)


def _relaxed_rounding(act: Activation, pre: Pre) -> tuple[torch.Tensor, float]:
    """`constant_rounding` of the relaxation's two constants (`_relaxed` on float32 rows): gamma_{n+1} (|mid| + half)
    per |lam| at each neuron, 2 n TINY."""
    assert pre is not None
    mid, half = _mid_half(relaxation(act, pre), torch.float64)
    w, c0 = constant_rounding(mid.abs() + half, math.prod(mid.shape[1:]))
    return w, 2 * c0


def _symbolic_box(z: Symbolic, pre: Pre, concretize: Concretize) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of z over the input set: its symbolic range, met with the box `pre` when one is given."""
    box = concretize(z)
    return box if pre is None else meet(box, pre)


def _mid_line(act: Activation, box: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(k, mid, half): sigma(z) in k z + [mid - half, mid + half] on the box (certify.bounds.relax's parallel lines)."""
    r = relax(act, box[0], box[1])
    dtype = box[0].dtype
    return r.slope.to(dtype), (0.5 * (r.lower + r.upper)).to(dtype), (0.5 * (r.upper - r.lower)).to(dtype)


def _centre_preactivation(conv: "Conv", act: Activation, box: Box,
                          interval: bool) -> tuple[torch.Tensor, ...]:
    """The mean-value steps' common start: z = T x + b at the centre (zc), |T| r, z's interval around the centre (met
    with interval arithmetic over the box unless `interval=False`) and the local slope range [dl, du] on it."""
    r = box.radius
    zc = conv(box.centre)
    abs_r = conv.apply_abs(r)
    zl, zh = zc - abs_r, zc + abs_r
    if interval:
        zl, zh = meet((zl, zh), conv.interval(box.lo, box.hi)[0])
    dl, du = act.slope_range(zl, zh)
    return r, zc, abs_r, zl, zh, dl, du


@dataclass(frozen=True, eq=False)
class Act(Layer):
    """x = sigma(z) elementwise, slopes in [a, b] (increasing)."""

    act: Activation
    nonlinear = True
    bounds_are_interval = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)

    def export(self, g: Any, x: Any) -> Any:
        return g.act(x, self.act)

    def lipschitz(self, norm: str) -> torch.Tensor:
        return torch.tensor(self.act.b, dtype=torch.float64)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """sigma is increasing: the exact image [sigma(lo), sigma(hi)]."""
        return (self.act(lo), self.act(hi)), (lo, hi)

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        (lo, hi), pre = self.interval(box.lo, box.hi)
        return Box(lo, hi, self.act(box.centre)), pre

    def backward(self, lam: torch.Tensor, const: torch.Tensor, pre: Pre,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _relaxed(self.act, lam, pre, rows, const)

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        """sigma(z) = k z + mid + half * delta on the pre-activation's interval (the relaxation's mid line)."""
        box = _symbolic_box(s, pre, concretize)
        k, mid, half = _mid_line(self.act, box)
        return Symbolic(columns(k) * s.A, k * s.c + mid, k * s.r + half), box

    def roundoff(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                 ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
        """|sigma^(z^) - sigma(z)| <= (largest slope on [lo - err, hi + err]) err + sigma's float32 error there."""
        zl, zh = lo - err, hi + err
        own = self.act.rounding(_magnitude(zl, zh))
        return own, self.act.slope_range(zl, zh)[1] * err + own

    def pre_error(self, err: torch.Tensor) -> torch.Tensor:
        """sigma's pre-activation is its input."""
        return err

    def backward_rounding(self, x: torch.Tensor, pre: Pre) -> tuple[torch.Tensor, torch.Tensor]:
        """lam k with k rounded to float32 and one product: gamma_2 |lam| k <= gamma_2 b |lam|, plus underflow; the
        relaxation's constants in float32 (`_relaxed_rounding`)."""
        w, c0 = _relaxed_rounding(self.act, pre)
        return gamma(2) * self.act.b * x + w, 2 * TINY * _sum_but_first(x) + c0


def _sigma_rounding(conv: "Conv", act: Activation, lo: torch.Tensor, hi: torch.Tensor, pre: Pre,
                    err: torch.Tensor, ball: Ball = None) -> tuple[torch.Tensor, ...]:
    """The float32 pre-activation and activation of a step's field at inputs within err of the box [lo, hi] (pre:
    z's box over it; ball: an L2 ball holding the exact inputs, for the conv's magnitudes): (|T| err, rho the conv's
    own error, the slopes [dl, du] on z's box widened by that, sigma's own error there, a bound of |sigma^|)."""
    assert pre is not None
    rho = conv.rounding(lo, hi, err, ball)
    abs_e = conv.apply_abs(err)
    dz = abs_e + rho
    zl, zh = pre[0] - dz, pre[1] + dz
    dl, du = act.slope_range(zl, zh)
    s_err = act.rounding(_magnitude(zl, zh))
    return abs_e, rho, dl, du, s_err, torch.maximum(act(zl).abs(), act(zh).abs()) + s_err


def _sigma_ball(step: "FieldStep", ball: tuple[torch.Tensor, torch.Tensor], dz: torch.Tensor,
                s_err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the exact input x lies in the L2 ball (c, r): the float32 activation sigma^ = fl(sigma(z^)), |z^ - z| <= dz,
    lies within e = b dz + sigma's error (elementwise) of the L2 ball around sigma(z_c) of radius b ||T||_2 r
    (z = T x + b_T, z_c = T c + b_T, b the largest slope). Returns (|sigma(z_c)|, that radius [B], e): the form
    `Affine.ball_rounding` takes."""
    zc = step.conv(ball[0])
    b = step.act.b
    return step.act(zc).abs(), b * step.pre_lipschitz("2").to(zc.dtype) * ball[1], b * dz + s_err


def _step_rounding(step: "FieldStep", lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                   ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 rule of a residual step x+ = x + h F(sigma(z)), z = T x + b, F linear, run as fl(x^ + fl(h_run F^)):
    x^+ - x+ = (I + h F D T)(x^ - x) + h F (D rho_z + sigma's error) + h (F's own error) + (h_run - h) F^ + two
    roundings (rho_z: the conv's own error, D: slopes on z's widened interval). `step.field_rounding(e, s_mag)` gives
    a bound of |F e + F's own error| and of |F^| from per-neuron bounds e and |sigma^| <= s_mag; `step._gain` bounds
    |(I + h F D T) err|. With an L2 ball (centre c, radius r) holding the exact x, the conv's and F's magnitudes are
    also taken over the balls: z within ||T||_2 r of z_c = T c + b, sigma(z) within b ||T||_2 r of sigma(z_c), so
    |sigma^| <= |sigma(z_c)| + (b (|T| err + rho) + sigma's error) + that ball (`field_rounding`'s `s_ball`).
    Returns (own: every term but the gain on err, own + the gain)."""
    h, h_run = step.h, step.step_run
    abs_e, rho, dl, du, s_err, s_mag = _sigma_rounding(step.conv, step.act, lo, hi, pre, err, ball)
    s_ball = None if ball is None else _sigma_ball(step, ball, abs_e + rho, s_err)
    inner, f_mag = step.field_rounding(du * rho + s_err, s_mag, s_ball)
    own = h * inner + (abs(h_run - h) + UNIT * h_run) * f_mag
    own = own + UNIT * (_magnitude(lo, hi, err) + h_run * f_mag * (1 + UNIT)) + 2 * TINY
    return own, own + step._gain(dl, du, err, abs_e)


class FieldStep(Layer):
    """A residual step x+ = x + h F(x) of the block's field F(y) = G sigma(T y + b) (G = I: the paper's field; G = -T^T:
    the gradient field). Subclasses give the field's rules, which the Euler step's own rules and every Runge-Kutta
    stage (RKStep) share: `field_out(z)` (G sigma(z)), `field_box` (F's box over a box of z), `field_abs(d, v)`
    (|G| (d v): with v = |T| r a bound of |F(y) - F(y')| for |y - y'| <= r and slopes <= d), `field_backward`,
    `field_symbolic`, `field_lipschitz` (L >= sup_D ||G D T||), `field_rounding`, and `_gain(dl, du, r, abs_r, h)`:
    a bound of |(I + h G D T) e| for |e| <= r."""

    conv: "Conv"
    h: float
    act: Activation
    h_run: float | None
    nonlinear = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.h * self.field(x)

    def field(self, y: torch.Tensor) -> torch.Tensor:
        return self.field_out(self.conv(y))

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def pre_lipschitz(self, norm: str) -> torch.Tensor:
        """A Lipschitz factor of x -> T x + b in `norm`."""
        return self.conv.lipschitz(norm)

    def pre_error(self, err: torch.Tensor) -> torch.Tensor:
        """|T (x^ - x)| <= |T| err."""
        return self.conv.apply_abs(err)

    @property
    def step_run(self) -> float:
        """The step the float32 network takes (h_run, else h)."""
        return self.h if self.h_run is None else self.h_run

    def export(self, g: Any, x: Any) -> Any:
        """x + h_run F(x), the step as run (torchdiffeq: y0 + dt * f0)."""
        return x + self.step_run * self.field_export(g, x)

    def field_export(self, g: Any, y: Any) -> Any:
        raise NotImplementedError

    def backward(self, lam: torch.Tensor, const: torch.Tensor, pre: Pre,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lam . x+ = lam . x + (h lam) . F(x), the field's term through its relaxation (`field_backward`)."""
        back, c = self.field_backward(self.h * lam, const, pre, rows)
        return lam + back, c

    def roundoff(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                 ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual step's float32 rule (`_step_rounding`)."""
        return _step_rounding(self, lo, hi, pre, err, ball)

    def field_out(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def field_box(self, zl: torch.Tensor, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def field_abs(self, d: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def field_backward(self, mu: torch.Tensor, const: torch.Tensor, pre: Pre,
                       rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def field_dual(self, mu: torch.Tensor) -> torch.Tensor:
        """The functional nu on sigma(z) with nu . sigma(z) = mu . F(y) (G^T mu)."""
        raise NotImplementedError

    def field_symbolic(self, z: Symbolic, k: torch.Tensor, mid: torch.Tensor, half: torch.Tensor) -> Symbolic:
        raise NotImplementedError

    def field_lipschitz(self, norm: str) -> torch.Tensor:
        raise NotImplementedError

    def field_rounding(self, e: torch.Tensor, s_mag: torch.Tensor,
                       s_ball: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a bound of |G e' + G's own float32 error| for |e'| <= e, a bound of |G^ sigma^|) with |sigma^| <= s_mag;
        `s_ball` (centre, radius [B], err): sigma^ also lies within err of the L2 ball (centre, radius), for G's
        magnitudes (G = I: none)."""
        raise NotImplementedError

    def _gain(self, dl: torch.Tensor, du: torch.Tensor, r: torch.Tensor, abs_r: torch.Tensor,
              h: float | None = None) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class EulerStep(FieldStep):
    """x+ = x + h sigma(T(K) x + b), one forward-Euler step of the ODE block (a square stride-1 same conv); `h_run`:
    the step the float32 network takes (torchdiffeq's t_{k+1} - t_k on its float32 grid; None: h)."""

    conv: Conv
    h: float
    act: Activation
    h_run: float | None = None

    def field_out(self, z: torch.Tensor) -> torch.Tensor:
        return self.act(z)

    def field_box(self, zl: torch.Tensor, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.act(zl), self.act(zh)

    def field_abs(self, d: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
        return d * v

    def field_backward(self, mu: torch.Tensor, const: torch.Tensor, pre: Pre,
                       rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu . sigma(z) >= (mu k) . z + const on z's box, z = T y + b: (T^T (mu k), (mu k) . b + const)."""
        g, const = _relaxed(self.act, self.field_dual(mu), pre, rows, const)
        return self.conv.backward(g, const, None, rows)

    def field_dual(self, mu: torch.Tensor) -> torch.Tensor:
        return mu

    def field_symbolic(self, z: Symbolic, k: torch.Tensor, mid: torch.Tensor, half: torch.Tensor) -> Symbolic:
        return Symbolic(columns(k) * z.A, k * z.c + mid, k * z.r + half)

    def field_lipschitz(self, norm: str) -> torch.Tensor:
        return self.act.b * self.conv.lipschitz(norm)

    def field_rounding(self, e: torch.Tensor, s_mag: torch.Tensor,
                       s_ball: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        return e, s_mag

    def field_export(self, g: Any, y: Any) -> Any:
        return g.act(self.conv.export(g, y), self.act)

    def backward_rounding(self, x: torch.Tensor, pre: Pre) -> tuple[torch.Tensor, torch.Tensor]:
        """lam + T^T (k (h lam)) in float32, each rounding a residual against what it multiplies: mu = fl(h lam)
        against sigma(z) (gamma_2 h |lam| |sigma|), g = fl(mu k) against z (gamma_2 b h |lam| |z|), the adjoint's
        m-term sums against x (gamma_m b h |lam| . |T| x), the add against x (u (|lam| + b h |T|^T |lam|) . x):
        all within gamma_{m+5} (x + h (|sigma| + b |z| + b |T| x)) per |lam|, plus underflow. The constants' dot
        products in float32 (`constant_rounding`): the relaxation's on mu and the bias's on g, |mu| <= h |lam| (1 + u),
        |g| <= b h |lam| (1 + u)^2: gamma_{n+3} h (|mid| + half + b |bias|)."""
        assert pre is not None
        m = self.conv.adjoint_terms + 5
        b = self.act.b
        z = torch.maximum(pre[0].abs(), pre[1].abs())
        s = torch.maximum(self.act(pre[0]).abs(), self.act(pre[1]).abs())
        w = gamma(m) * (x + self.h * (s + b * z + b * self.conv.apply_abs(x)))
        mid, half = _mid_half(relaxation(self.act, pre), torch.float64)
        n = math.prod(mid.shape[1:])
        bias = self.conv.bias_map().to(torch.float64).expand(mid.shape[1:])  # type: ignore[union-attr]
        wc, c0 = constant_rounding(self.h * (mid.abs() + half + b * bias.abs()), n + 2)
        return w + wc, m * TINY * (_sum_but_first(x) + self.h * _sum_but_first(s + z)) + 3 * c0

    def lipschitz(self, norm: str) -> torch.Tensor:
        """Bounds of ||I + h D T(K)|| over every admissible D (contraction.weights, the block certificates' rules)."""
        a, b, K = self.act.a, self.act.b, self.conv.weight
        if norm == "inf":
            return euler_factor_inf(K, a, b, self.h)
        if norm == "2":
            snorm = conv_spectral_norm_tensor(K, self.conv.size, self.conv.size, self.conv.padding)
            return euler_factor_2(K, a, b, self.h, snorm)
        raise norm_error(norm)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """x+ in [lo + h sigma(z_lo), hi + h sigma(z_hi)] with [z_lo, z_hi] the conv's range over the box (sigma is
        increasing and h > 0): the residual step's interval arithmetic, met with the mean-value box around the box's
        midpoint m, x+ in m + h sigma(T m + b) +- `_gain` (slopes on [z_lo, z_hi], r the half-width). No extra
        convolution: T m + b and |T| r are the interval's own centre and radius. Interval arithmetic grows a box by
        up to 1 + h b (|c| + R) per step whatever the step does; through a step certified contractive the mean-value
        box does not grow, so IBP and the certified losses built on this rule see the contraction."""
        act, h = self.act, self.h
        mid, rad = 0.5 * (lo + hi), 0.5 * (hi - lo)
        zc, abs_r = self.conv(mid), self.conv.apply_abs(rad)
        zl, zh = zc - abs_r, zc + abs_r
        dl, du = act.slope_range(zl, zh)
        gain = self._gain(dl, du, rad, abs_r)
        xc = mid + h * act(zc)
        return meet((xc - gain, xc + gain), (lo + h * act(zl), hi + h * act(zh))), (zl, zh)

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        """Mean-value enclosure around the centre, with the local slopes [dl, du] of each neuron:
        |dx+_i| <= max_{d in {dl, du}} |1 + h d c_i| r_i + h d (|T| r - |c| r)_i, intersected with interval
        arithmetic x+ in [lo + h sigma(z_lo), hi + h sigma(z_hi)] (unless `interval=False`, the cheap training path)."""
        act, h = self.act, self.h
        r, zc, abs_r, zl, zh, dl, du = _centre_preactivation(self.conv, act, box, interval)
        gain = self._gain(dl, du, r, abs_r)
        xc = box.centre + h * act(zc)
        lo, hi = xc - gain, xc + gain
        if interval:
            lo, hi = meet((lo, hi), (box.lo + h * act(zl), box.hi + h * act(zh)))
        return Box(lo, hi, xc), (zl, zh)

    def _gain(self, dl: torch.Tensor, du: torch.Tensor, r: torch.Tensor, abs_r: torch.Tensor,
              h: float | None = None) -> torch.Tensor:
        """A bound of |(I + h D T) e| for |e| <= r and dl <= D <= du (abs_r = |T| r; h: the layer's step unless
        given): the centre tap's |1 + h d c| r plus the off-centre mass h d (|T| r - |c| r), convex in d, so its
        larger value at d = dl, du."""
        c = self.conv.diagonal()
        return euler_row_gain(c, r, (abs_r - c.abs() * r).clamp_min(0.0), self.h if h is None else h, dl, du)

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        """x+ = (I + h diag(k) T) x + h k b + h (mid + half * delta) with sigma(z) = k z + mid + half * delta on z's
        interval: the linear part exact, the error through |I + h diag(k) T| (the mean-value rule's centre taps)."""
        layer, h = self.conv, self.h
        z = Symbolic(layer.apply_columns(s.A), layer(s.c), layer.apply_abs(s.r))
        box = _symbolic_box(z, pre, concretize)
        k, mid, half = _mid_line(self.act, box)
        c = layer.diagonal()
        off = (z.r - c.abs() * s.r).clamp_min(0.0)
        r = (1 + h * k * c).abs() * s.r + h * k * off + h * half
        return Symbolic(z.A.mul_(columns(h * k)).add_(s.A), s.c + h * (k * z.c + mid), r), box


@dataclass(frozen=True, eq=False)
class GradientStep(FieldStep):
    """x+ = x - h T^T sigma(T x + b), one Euler step of the gradient field (T = T(K) a square stride-1 same conv, K the
    kernel as run). Its Jacobian I - h T^T D T is symmetric for every slope matrix D."""

    conv: Conv
    h: float
    act: Activation
    h_run: float | None = None  # the step the float32 network takes (as EulerStep's)
    smax: torch.Tensor | None = None  # a known bound of ||T||_2 (training reuses the field's); None: the DFT bound

    @cached_property
    def adj(self) -> Conv:
        """T^T (no bias), built once per layer (every rule uses it)."""
        return self.conv.transposed()

    @cached_property
    def _squared_adj(self) -> Conv:
        """T^T with squared taps (the diagonal of T^T diag(d) T is this map on d)."""
        return Conv(self.conv.weight.square(), self.conv.bias, 1, self.conv.pad, self.conv.padding,
                    self.conv.size).transposed()

    def field_out(self, z: torch.Tensor) -> torch.Tensor:
        return -self.adj.apply(self.act(z))

    def field_box(self, zl: torch.Tensor, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (yl, yh), _ = self.adj.interval(self.act(zl), self.act(zh))
        return -yh, -yl

    def field_abs(self, d: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
        return self.adj.apply_abs(d * v)

    def field_backward(self, mu: torch.Tensor, const: torch.Tensor, pre: Pre,
                       rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu . (-T^T sigma(z)) = nu . sigma(z) with nu = -T mu, through the relaxation on z's box, z = T y + b."""
        g, const = _relaxed(self.act, self.field_dual(mu), pre, rows, const)
        return self.conv.backward(g, const, None, rows)

    def field_dual(self, mu: torch.Tensor) -> torch.Tensor:
        return -self.conv.apply(mu)

    def field_symbolic(self, z: Symbolic, k: torch.Tensor, mid: torch.Tensor, half: torch.Tensor) -> Symbolic:
        adj = self.adj
        return Symbolic(-adj.apply_columns(columns(k) * z.A), -adj.apply(k * z.c + mid), adj.apply_abs(k * z.r + half))

    def field_lipschitz(self, norm: str) -> torch.Tensor:
        """b ||T||_2^2 (L2); b times the largest row sum of |T|^T |T| (Linf)."""
        conv = self.conv
        if norm == "2":
            smax = conv.lipschitz("2") if self.smax is None else self.smax
            return self.act.b * smax.square()
        if norm == "inf":
            ones = torch.ones(1, *self._shape(), dtype=conv.weight.dtype, device=conv.weight.device)
            return self.act.b * self.adj.apply_abs(conv.apply_abs(ones)).amax()
        raise norm_error(norm)

    def field_export(self, g: Any, y: Any) -> Any:
        return -1.0 * self.adj.export(g, g.act(self.conv.export(g, y), self.act))

    def field_rounding(self, e: torch.Tensor, s_mag: torch.Tensor,
                       s_ball: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """T^T adds its own sum's error (over the ball too where one is given: `Affine.ball_rounding`)."""
        adj = self.adj
        own = adj.rounding(-s_mag, s_mag)
        if s_ball is not None:
            own = torch.minimum(own, adj.ball_rounding(*s_ball))
        return adj.apply_abs(e) + own, adj.apply_abs(s_mag) + own

    def lipschitz(self, norm: str) -> torch.Tensor:
        """L2: max(h b s_max^2 - 1, 1 - h a s_min^2) (the symmetric step's spectrum; s_min only for circular padding,
        where the DFT gives it exactly, and only without a given `smax`; differentiable through s_max); Linf: the row
        sums of contraction.certificates.gradient_step_factors."""
        a, b, h, conv = self.act.a, self.act.b, self.h, self.conv
        if norm == "2":
            smax = conv.lipschitz("2") if self.smax is None else self.smax
            smin = 0.0  # training (a live bound given): s_min taken as 0, the non-expansive factor; it has no gradient
            if conv.padding == "circular" and self.smax is None:
                smin = conv_singular_range(conv.weight, conv.size, conv.size, conv.padding)[0]
            return gradient_factor_2(a, b, h, smin, smax)
        if norm == "inf":
            ones = torch.ones(1, *self._shape(), dtype=conv.weight.dtype, device=conv.weight.device)
            return self._gain(a * ones, b * ones, ones, conv.apply_abs(ones)).amax()
        raise norm_error(norm)

    def _shape(self) -> tuple[int, int, int]:
        return (self.conv.weight.shape[1], self.conv.size, self.conv.size)

    def _diag(self, d: torch.Tensor) -> torch.Tensor:
        """The diagonal of T^T diag(d) T: sum_q T_qp^2 d_q (T^T with squared taps, on d; exact while no two taps wrap
        onto the same pixel, which the config ensures: circular padding needs a side >= the kernel)."""
        return self._squared_adj.apply(d)

    def _gain(self, dl: torch.Tensor, du: torch.Tensor, r: torch.Tensor, abs_r: torch.Tensor,
              h: float | None = None) -> torch.Tensor:
        """A bound of |(I - h T^T D T) e| for |e| <= r and dl <= D <= du (0 <= dl; h: the layer's step unless given):
        the diagonal 1 - h g, g between the diagonals at dl and du, and the off-diagonal mass h |T|^T du |T| r less
        its diagonal part."""
        gu = self._diag(du)
        return gradient_row_gain(self._diag(dl), gu, r, (self.adj.apply_abs(du * abs_r) - gu * r).clamp_min(0.0),
                                 self.h if h is None else h)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """Interval arithmetic: z over the box, sigma(z) in [sigma(z_lo), sigma(z_hi)], T^T of that box, then
        x+ in [lo - h (T^T s)_hi, hi - h (T^T s)_lo] (sound, loose: x and the step are bounded apart)."""
        (zl, zh), _ = self.conv.interval(lo, hi)
        (yl, yh), _ = self.adj.interval(self.act(zl), self.act(zh))
        return (lo - self.h * yh, hi - self.h * yl), (zl, zh)

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        """Mean-value enclosure around the centre: x+ - xc+ = (I - h T^T D T)(x - xc) with D the chord slopes in
        [dl, du] on z's interval, bounded by `_gain`; met with interval arithmetic (unless `interval=False`)."""
        act, h = self.act, self.h
        r, zc, abs_r, zl, zh, dl, du = _centre_preactivation(self.conv, act, box, interval)
        gain = self._gain(dl, du, r, abs_r)
        xc = box.centre - h * self.adj.apply(act(zc))
        lo, hi = xc - gain, xc + gain
        if interval:
            (il, ih), _ = self.interval(box.lo, box.hi)
            lo, hi = meet((lo, hi), (il, ih))
        return Box(lo, hi, xc), (zl, zh)

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        """x+ = (I - h T^T diag(k) T) x - h T^T (k b + mid + half * delta) with sigma(z) = k z + mid + half * delta on
        z's interval: the linear part exact; the error through `_gain` at D = diag(k), plus h |T^T| half."""
        conv, adj, h = self.conv, self.adj, self.h
        z = Symbolic(conv.apply_columns(s.A), conv(s.c), conv.apply_abs(s.r))
        box = _symbolic_box(z, pre, concretize)
        k, mid, half = _mid_line(self.act, box)
        r = self._gain(k, k, s.r, z.r) + h * adj.apply_abs(half)
        A = s.A - h * adj.apply_columns(z.A.mul_(columns(k)))
        return Symbolic(A, s.c - h * adj.apply(k * z.c + mid), r), box


def _pair(pre: Pre, i: int) -> Pre:
    """Stage i's pre-activation box out of a Runge-Kutta step's stacked boxes ([B, stages, ...])."""
    return None if pre is None else (pre[0][:, i], pre[1][:, i])


def _stack(boxes: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in boxes], 1), torch.stack([b[1] for b in boxes], 1)


def _combine_box(lo: torch.Tensor, hi: torch.Tensor, h: float, weights: tuple[float, ...],
                 boxes: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval arithmetic of x + h sum_j w_j k_j (x in [lo, hi], k_j in boxes[j], h > 0)."""
    for w, (kl, kh) in zip(weights, boxes):
        if w > 0:
            lo, hi = lo + (h * w) * kl, hi + (h * w) * kh
        elif w < 0:
            lo, hi = lo + (h * w) * kh, hi + (h * w) * kl
    return lo, hi


def _weighted(weights: tuple[float, ...], terms: list[torch.Tensor | None], scale: float = 1.0,
              start: torch.Tensor | None = None) -> torch.Tensor | None:
    """start + sum_j scale |w_j| terms_j over the nonzero weights (None: nothing to add)."""
    out = start
    for w, t in zip(weights, terms):
        if w and t is not None:
            out = scale * abs(w) * t if out is None else out + scale * abs(w) * t
    return out


@dataclass(frozen=True)
class _Stages:
    """RKStep's stage-by-stage enclosure of a box: the input's radius r (and |T| r), per stage the radius R_i >=
    |Y_i - Y_i^c|, the centre k_i^c, the field's box, kappa_i >= |k_i - k_i^c|, the drift bound, the slopes, and the
    stacked pre-activation boxes."""

    r: torch.Tensor
    abs_r: torch.Tensor
    radii: list[torch.Tensor]
    centres: list[torch.Tensor]
    kboxes: list[tuple[torch.Tensor, torch.Tensor]]
    kappas: list[torch.Tensor]
    drifts: list[torch.Tensor | None]
    slopes: list[tuple[torch.Tensor, torch.Tensor]]
    pre: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class RKStep(Layer):
    """One explicit Runge-Kutta step of the block's field (contraction.runge_kutta: the tableau, as the block runs it):
    k_i = F(Y_i), Y_i = x + h sum_{j<i} a_ij k_j, x+ = x + h sum_i b_i k_i, F the field of `euler` (the field's Euler
    step layer: its conv, slopes, step and field rules, FieldStep). Every rule goes stage by stage through the field's
    rules; the pre-activation box is the stages' boxes stacked on dim 1 ([B, stages, C, H, W]).

    The mean-value rules keep the contraction: with dx the deviation of the input from the centre's and D_i the chord
    slopes of stage i (in its local slope range), x+ = sum_i b_i (x + h k_i) (sum b_i = 1) and
    x + h k_i = (I + h G D_i T) x + h G D_i T (Y_i - x): each term through the Euler step's gain with stage i's slopes
    plus the stage's drift |Y_i - x| (the elementwise form of E(h) + h L sum b_i e_i); the Shu-Osher form of the SSP
    tableaus (heun2, ssprk3) as its combination of Euler gains; and stages x + h a f(x) as Euler steps of size h a."""

    euler: FieldStep
    tableau: Tableau
    nonlinear = True

    @property
    def conv(self) -> Conv:
        return self.euler.conv

    @property
    def act(self) -> Activation:
        return self.euler.act

    @property
    def h(self) -> float:
        return self.euler.h

    @property
    def h_run(self) -> float | None:
        return self.euler.h_run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return tableau_step(self.euler.field, x, self.h, self.tableau)

    def export(self, g: Any, x: Any) -> Any:
        """The tableau's stages and update with the step as run (h_run)."""
        return tableau_step(lambda y: self.euler.field_export(g, y), x, self.euler.step_run, self.tableau)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The stages' pre-activations T Y_i + b, stacked on dim 1."""
        ks, zs = [], []
        for row in self.tableau.a:
            zs.append(self.conv(combine(x, self.h, row, ks)))
            ks.append(self.euler.field_out(zs[-1]))
        return torch.stack(zs, 1)

    def pre_lipschitz(self, norm: str) -> torch.Tensor:
        """||T|| (1 + max_i e_i): every stage input moves at most 1 + e_i times as far as x (contraction.runge_kutta)."""
        e = stage_factors(self.tableau, self.h, self.euler.field_lipschitz(norm))
        return self.conv.lipschitz(norm) * (1.0 + max(e[1:], default=0.0))

    def lipschitz(self, norm: str) -> torch.Tensor:
        """The weight-only factor of the step (contraction.runge_kutta.step_factor) from the Euler step's factor E(h)
        and the field's L (differentiable in the weights)."""
        return step_factor(self.tableau, self.h, self.euler.lipschitz(norm), self.euler.field_lipschitz(norm))

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """Interval arithmetic stage by stage, met with the mean-value box around the box's midpoint (`bounds`)."""
        box, pre = self.bounds(Box(lo, hi, 0.5 * (lo + hi)), True)
        return (box.lo, box.hi), pre

    def bounds(self, box: Box, interval: bool = True) -> tuple[Box, Pre]:
        """Mean-value enclosure stage by stage (class docstring): per stage i the centre Y_i^c, a radius R_i >= |Y_i -
        Y_i^c| (r + h sum_j |a_ij| kappa_j, kappa_j >= |k_j - k_j^c| = |G D_j T (Y_j - Y_j^c)|), z_i's box and its
        slopes; met with interval arithmetic (unless `interval=False`, the cheap training path). The update
        x+ - x+^c = sum_i b_i [(x - x^c) + h (k_i - k_i^c)] (sum b_i = 1) through each term's Euler gain with
        weight |b_i| (any sign)."""
        st = self._stages(box, interval)
        e, tab, h, conv = self.euler, self.tableau, self.h, self.conv
        r, abs_r = st.r, st.abs_r
        radii, centres, kboxes, kappas, drifts, slopes = st.radii, st.centres, st.kboxes, st.kappas, st.drifts, st.slopes
        xc = combine(box.centre, h, tab.b, centres)
        gain = _weighted(tab.b, kappas, h, r)
        mean_value = None
        for w, (dl, du), drift in zip(tab.b, slopes, drifts):
            if w:
                term = e._gain(dl, du, r, abs_r)
                if drift is not None:
                    term = term + h * e.field_abs(du, conv.apply_abs(drift))
                mean_value = abs(w) * term if mean_value is None else mean_value + abs(w) * term
        gain = torch.minimum(gain, mean_value)
        if tab.shu_osher is not None:
            gain = torch.minimum(gain, self._shu_osher(tab.shu_osher[-1], radii, slopes, kappas))
        lo, hi = xc - gain, xc + gain
        if interval:
            lo, hi = meet((lo, hi), _combine_box(box.lo, box.hi, h, tab.b, kboxes))
        return Box(lo, hi, xc), st.pre

    def estimate_bounds(self, box: Box, interval: bool = True) -> tuple[tuple[torch.Tensor, torch.Tensor], Pre]:
        """A box of the error estimate h sum_i error_i k_i (the tableau's error weights) over `box`: its value at the
        stages' centres +- h sum_i |error_i| kappa_i, met with interval arithmetic over the stages' field boxes."""
        assert self.tableau.error is not None
        st, w = self._stages(box, interval), self.tableau.error
        zero = torch.zeros_like(box.centre)
        ec = combine(zero, self.h, w, st.centres)
        rad = _weighted(w, st.kappas, self.h, zero)
        lo, hi = ec - rad, ec + rad  # type: ignore[operator]
        if interval:
            lo, hi = meet((lo, hi), _combine_box(zero, zero, self.h, w, st.kboxes))
        return (lo, hi), st.pre

    def _stages(self, box: Box, interval: bool) -> "_Stages":
        e, tab, h, conv, act = self.euler, self.tableau, self.h, self.conv, self.act
        r = box.radius
        abs_r = conv.apply_abs(r)
        radii, centres, kboxes, kappas, drifts, slopes, pres = [], [], [], [], [], [], []
        for i, row in enumerate(tab.a):
            yc = combine(box.centre, h, row, centres)
            drift = _weighted(row, kappas, h)  # >= |(Y_i - Y_i^c) - (x - x^c)|
            R = r if drift is None else r + drift
            first = tab.single_source[i]
            if first is not None:  # Y_i = x + h a_i1 f(x): an Euler step of size h a_i1 with stage 1's slopes
                R = torch.minimum(R, e._gain(*slopes[0], r, abs_r, h * first))
            if tab.shu_osher is not None and i > 0:
                R = torch.minimum(R, self._shu_osher(tab.shu_osher[i - 1], radii, slopes, kappas))
            abs_R = conv.apply_abs(R)
            zc = conv(yc)
            zl, zh = zc - abs_R, zc + abs_R
            if interval:
                yl, yh = meet(_combine_box(box.lo, box.hi, h, row, kboxes), (yc - R, yc + R))
                zl, zh = meet((zl, zh), conv.interval(yl, yh)[0])
            dl, du = act.slope_range(zl, zh)
            kc, kappa = e.field_out(zc), e.field_abs(du, abs_R)
            kbox = (kc - kappa, kc + kappa)
            if interval:
                kbox = meet(kbox, e.field_box(zl, zh))
            radii.append(R), centres.append(kc), kboxes.append(kbox), kappas.append(kappa), drifts.append(drift)
            slopes.append((dl, du)), pres.append((zl, zh))
        return _Stages(r, abs_r, radii, centres, kboxes, kappas, drifts, slopes, _stack(pres))

    def _shu_osher(self, row: tuple[tuple[float, float], ...], radii: list[torch.Tensor],
                   slopes: list[tuple[torch.Tensor, torch.Tensor]], kappas: list[torch.Tensor]) -> torch.Tensor:
        """A bound of |v_m - v_m^c| for the Shu-Osher row v_m = sum_k alpha_k v_k + h beta_k f(v_k): alpha_k times the
        Euler gain of step h beta_k / alpha_k with stage k's slopes on R_k (v_0 = x, v_k = Y_{k+1}), or h |beta_k|
        kappa_k where alpha_k = 0."""
        e, h, conv = self.euler, self.h, self.conv
        out = None
        for k, (alpha, beta) in enumerate(row):
            if alpha > 0:
                term = alpha * (e._gain(*slopes[k], radii[k], conv.apply_abs(radii[k]), h * beta / alpha) if beta
                                else radii[k])
            elif beta:
                term = h * abs(beta) * kappas[k]
            else:
                continue
            out = term if out is None else out + term
        assert out is not None
        return out

    def backward(self, lam: torch.Tensor, const: torch.Tensor, pre: Pre,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse through the stages: mu_i (the functional on k_i) = h b_i lam + sum_{l>i} h a_li lam_l; each stage's
        field relaxation gives lam_i on Y_i, which reaches x with weight 1 and k_j with h a_ij."""
        tab, h = self.tableau, self.h
        mus: list[torch.Tensor | None] = [(h * w) * lam if w else None for w in tab.b]
        out = lam
        for i in range(tab.stages - 1, -1, -1):
            mu = mus[i]
            if mu is None:
                continue
            back, const = self.euler.field_backward(mu, const, _pair(pre, i), rows)
            out = out + back
            for j, w in enumerate(tab.a[i]):
                if w:
                    mus[j] = (h * w) * back if mus[j] is None else mus[j] + (h * w) * back
        return out, const

    def symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> tuple[Symbolic, Pre]:
        """Stage by stage: Y_i's linear part exact, its error x's plus h sum |a_ij| (k_j's error); each stage through
        the field's mid line on its interval. The update's error: the smaller of x's plus h sum b_i (k_i's) and the
        mean-value form sum_i b_i (|I + h G k_i T| x's error + h |G| k_i |T| (Y_i's extra error) + h |G| half_i)."""
        e, tab, h, conv = self.euler, self.tableau, self.h, self.conv
        ks, drifts, lines, boxes = self._symbolic_stages(s, pre, concretize)
        A, c = combine(s.A, h, tab.b, [k.A for k in ks]), combine(s.c, h, tab.b, [k.c for k in ks])
        plain = _weighted(tab.b, [k.r for k in ks], h, s.r)
        abs_sr = conv.apply_abs(s.r)
        mean_value = None
        for w, (k, half), drift in zip(tab.b, lines, drifts):
            if w:
                term = e._gain(k, k, s.r, abs_sr) + h * e.field_abs(1.0, half)
                if drift is not None:
                    term = term + h * e.field_abs(k, conv.apply_abs(drift))
                mean_value = abs(w) * term if mean_value is None else mean_value + abs(w) * term
        return Symbolic(A, c, torch.minimum(plain, mean_value)), _stack(boxes)

    def estimate_symbolic(self, s: Symbolic, pre: Pre, concretize: Concretize) -> Symbolic:
        """The error estimate e = h sum_i w_i k_i (w the error weights, summing to 0) as a linear form of the input over
        the stages' relaxations k_i = G (K_i z_i + mid_i +- half_i), z_i = T Y_i + b: the linear parts combine exactly
        (first-order terms cancel). Every stage input is Y_i = (its linear form) + dx + eta_i with the same state error
        dx (|dx| <= s.r) and |eta_i| <= drift_i, so the error is h G (sum_i w_i K_i) T dx, bounded with
        |sum_i w_i k_i| (the stages' mid slopes nearly agree), plus h sum_i |w_i| (|G| K_i |T| drift_i + |G| half_i)."""
        assert self.tableau.error is not None
        e, w, h = self.euler, self.tableau.error, self.h
        ks, drifts, lines, _ = self._symbolic_stages(s, pre, concretize)
        slope = combine(torch.zeros_like(s.r), 1.0, w, [k for k, _ in lines]).abs()
        r = h * e.field_abs(slope, self.conv.apply_abs(s.r))
        for wi, (k, half), drift in zip(w, lines, drifts):
            if wi:
                own = e.field_abs(1.0, half) if drift is None else \
                    e.field_abs(k, self.conv.apply_abs(drift)) + e.field_abs(1.0, half)
                r = r + (h * abs(wi)) * own
        return Symbolic(combine(torch.zeros_like(s.A), h, w, [k.A for k in ks]),
                        combine(torch.zeros_like(s.c), h, w, [k.c for k in ks]), r)

    def _symbolic_stages(self, s: Symbolic, pre: Pre, concretize: Concretize
                         ) -> tuple[list[Symbolic], list[torch.Tensor | None], list[tuple[torch.Tensor, torch.Tensor]],
                                    list[tuple[torch.Tensor, torch.Tensor]]]:
        e, tab, h, conv, act = self.euler, self.tableau, self.h, self.conv, self.act
        ks: list[Symbolic] = []
        drifts, lines, boxes = [], [], []
        for i, row in enumerate(tab.a):
            A, c = combine(s.A, h, row, [k.A for k in ks]), combine(s.c, h, row, [k.c for k in ks])
            drift = _weighted(row, [k.r for k in ks], h)
            z = Symbolic(conv.apply_columns(A), conv(c), conv.apply_abs(s.r if drift is None else s.r + drift))
            box = _symbolic_box(z, _pair(pre, i), concretize)
            k, mid, half = _mid_line(act, box)
            ks.append(e.field_symbolic(z, k, mid, half))
            drifts.append(drift), lines.append((k, half)), boxes.append(box)
        return ks, drifts, lines, boxes

    def roundoff(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, err: torch.Tensor,
                 ball: Ball = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step as run in float32, stage by stage (the ball is not used: each stage's magnitudes come from its
        own boxes): each stage input fl(x^ + h_run sum a_ij k^_j) within
        gamma_m (|x^| + h_run sum |a_ij| |k^_j|) of its exact sum in any order of the sums and of the products by
        the (rounded) coefficients (m = stages + 5), plus (h_run - h) sum |a_ij| |k_j|; each field evaluation as the
        Euler step's (the conv's and sigma's own errors, G's); the update likewise. The own error: the chain from a
        zero error at inputs within err of the box, over the stage boxes widened by the full chain's errors."""
        full, widen = self._rounding_chain(lo, hi, pre, err, err)
        return self._rounding_chain(lo, hi, pre, torch.zeros_like(err), err, widen)[0], full

    def estimate_rounding(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre) -> torch.Tensor:
        """A bound of |fl32(error estimate) - error estimate| at every state in [lo, hi] as the solver computes it
        (the stages as the step's, the estimate's sum with the error weights), from a state without error."""
        assert self.tableau.error is not None
        zero = torch.zeros_like(lo)
        return self._rounding_chain(lo, hi, pre, zero, zero, weights=self.tableau.error)[0]

    def _rounding_chain(self, lo: torch.Tensor, hi: torch.Tensor, pre: Pre, e_x: torch.Tensor, mag_err: torch.Tensor,
                        widen: list[torch.Tensor] | None = None, weights: tuple[float, ...] | None = None
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        e, tab, h, conv = self.euler, self.tableau, self.h, self.conv
        h_run = self.euler.step_run
        assert pre is not None
        m = tab.stages + 5
        g, slack = gamma(m), 4 * m * TINY
        x_mag = _magnitude(lo, hi, mag_err)
        kboxes, errs, mags, stage_errs = [], [], [], []
        for i, row in enumerate(tab.a):
            yl, yh = _combine_box(lo, hi, h, row, kboxes)
            zl, zh = _pair(pre, i)  # type: ignore[misc]
            ey = _weighted(row, errs, h_run, e_x)
            if any(row):
                sizes = _weighted(row, mags, 1.0)
                ey = ey + g * (x_mag + h_run * sizes) + abs(h_run - h) * sizes + slack
            if widen is not None:
                wz = conv.apply_abs(widen[i])
                yl, yh, zl, zh = yl - widen[i], yh + widen[i], zl - wz, zh + wz
            stage_errs.append(ey)
            _, rho, dl, du, s_err, s_mag = _sigma_rounding(conv, self.act, yl, yh, (zl, zh), ey)
            ek, kmag = e.field_rounding(du * (conv.apply_abs(ey) + rho) + s_err, s_mag)
            errs.append(ek), mags.append(kmag), kboxes.append(e.field_box(*_pair(pre, i)))  # type: ignore[misc]
        w = tab.b if weights is None else weights
        sizes = _weighted(w, mags, 1.0)
        out = _weighted(w, errs, h_run, e_x) + g * (x_mag + h_run * sizes) + abs(h_run - h) * sizes + slack
        return out, stage_errs


STEP_LAYERS: dict[str, type[Layer]] = {"paper": EulerStep, "gradient": GradientStep, "contractive": EulerStep}
"""The Euler step's layer type of each field (`ModelConfig.field`)."""
