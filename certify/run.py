"""Certifying a model: plan (validate, round-off check, network bound) -> batches (radii, tight stages) -> one
report, gathered over processes and shards (the checks by attack: certify.checks).

Float32: every certificate is for the network as it runs in float32: each margin's slack is the derived float32
error bound over the ball (certify.bounds.roundoff; the global stage's radius pays it at the input and in the
ball), and the plan checks that the float32 logits on a sample lie inside it (a cross-check of the error model:
outside, the certificate is withheld).

A controlled-solver model ('dopri5-dyadic', 'bosh3-dyadic') runs its own sequence of steps on each input: the inputs
of a batch are grouped by their schedule, each group certified on its schedule's layers, and an input is certified
only where every accept/reject decision of its run is also proven the same over the ball (certify.bounds.decisions);
the global stage and the radius bisection need one layer sequence for the whole ball and are not offered for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from tqdm import tqdm

from contraction.adaptive import PAIRS, Schedule, decisions, group_by_schedule
from contraction.certificates import block_certificates
from contraction.errors import CertificateWithheldError, CNodeError, DataError, check_norm
from contraction.runge_kutta import FIXED_STEP, TABLEAUS
from certify.bounds.attacks import is_adversarial, pgd
from certify.bounds.decisions import decision_proofs
from certify.bounds.lipschitz import NetworkBound, best_network_bound
from certify.bounds.local import LayerBounds, box_margins, ibp_bounds, local_bounds
from certify.bounds.radius import certified_accuracy, certified_radii, float32_below, unproven
from certify.bounds.roundoff import ERROR_MODEL, ball_error, ball_terms, float32_error, hull_error, margin_slack
from certify.bounds.tight import REFINE_SECONDS, TIGHT_STAGES, escalate, tight_radii
from certify.bounds.unrolled import Unrolled, unroll
from nodes.classifier import ConvNODE
from nodes.data import ImageData, batches
from nodes.device import eval_mode, exact_float32, module_device, place
from nodes.distributed import SINGLE, Dist, batch_shard

if TYPE_CHECKING:  # the checks' results (certify.checks) are attached to a report
    from certify.bounds.roundoff import Float32Terms
    from certify.checks import AttackCheck, PGDCheck

__all__ = ["CertifyReport", "CertifyPlan", "BatchResult", "plan_certification", "certify_batch", "certify_model",
           "certify_tensors", "check_eps", "BOUNDS", "BoundMethod"]

RADIUS_CAP = {"inf": 0.5, "2": 10.0}  # bisection's upper end for --radius


@dataclass(frozen=True)
class BoundMethod:
    """A `--bound` choice: the block certificates of the global stage, then the tight stages (certify.bounds.tight) in
    order, each on the inputs still unproven; `falsify`: attack those inputs before the expensive stages."""

    tight: tuple[str, ...]
    lmi: bool = False
    falsify: bool = False
    help: str = ""


BOUNDS: dict[str, BoundMethod] = {
    "global": BoundMethod((), help="Lipschitz product with the best weight bound of the ODE block"),
    "lmi": BoundMethod((), lmi=True, help="the same with the S-procedure LMI block certificate (--norm 2, circular)"),
    "local": BoundMethod(TIGHT_STAGES[:1], help="global, then interval + local-slope boxes over the eps-ball"),
    "crown": BoundMethod(TIGHT_STAGES[:2], help="... then a linear backward pass over the boxes (CROWN-IBP style)"),
    "linear": BoundMethod(TIGHT_STAGES[:3], help="... then linear intermediate bounds and the backward pass over them"),
    "alpha": BoundMethod(TIGHT_STAGES[:4], help="... then the backward pass with each open margin's own optimised "
                         "lower lines (alpha-CROWN style)"),
    "refine": BoundMethod(TIGHT_STAGES[:5], help="... then back-substituted bounds of the neurons the open margins "
                          "need most, in rounds, up to --budget seconds per input"),
    "auto": BoundMethod(TIGHT_STAGES, falsify=True,
                        help="every stage, with a PGD attack dropping the inputs it breaks before the linear stage"),
}
STAGES = ("global",) + TIGHT_STAGES
FALSIFY_STEPS = 10  # PGD steps (margin loss) of auto's attack before the expensive stages (5, 10 and 20 broke the same
# inputs on the shipped weight-regularized and certified-trained models; docs/RESULTS.md section 7)


@dataclass
class RunDecisions:
    """A controlled-solver batch: per input the attempted steps, the decisions its run made, how many of them were
    proven the same over the ball (counted only on correct inputs; 0 of 0 where the run made none)."""

    attempts: torch.Tensor
    decisions: torch.Tensor
    proven: torch.Tensor

    @staticmethod
    def cat(parts: "list[RunDecisions]") -> "RunDecisions":
        return RunDecisions(*(torch.cat([getattr(p, k) for p in parts]) for k in ("attempts", "decisions", "proven")))

    def summary(self, correct: torch.Tensor) -> dict[str, Any]:
        """The report's figures: mean attempts per input; over the correct inputs the decisions made and proven and
        the inputs with a decision left open (those are not certified)."""
        d, p = self.decisions[correct], self.proven[correct]
        return {"mean_attempts": float(self.attempts.double().mean()) if len(self.attempts) else 0.0,
                "decisions": int(d.sum()), "decisions_proven": int(p.sum()),
                "inputs_with_open_decision": int((p < d).sum())}


@dataclass
class CertifyReport:
    """Certified robustness of a model on a dataset at eps, with the bound used and per-input radii.

    One radius convention: `radii[i]` is the radius of a closed ball around input i on which the prediction is
    proven (0 when misclassified); input i is certified at eps iff radii[i] >= eps. `certified_by[i]` names the
    stage that proved it ('global', 'local', 'crown', 'linear'), or '' when it is not certified at eps.
    `falsified[i]`: an attack found an adversarial input in its eps-ball (auto's check before the expensive
    stages; then no certificate exists)."""

    dataset: str
    norm: str
    eps: float
    bound: NetworkBound | dict[str, Any]  # a dict in a report rebuilt from JSON (`from_samples`)
    labels: torch.Tensor
    predictions: torch.Tensor
    radii: torch.Tensor
    certified_by: list[str]
    timing: dict[str, float]
    roundoff: dict[str, Any]
    falsified: torch.Tensor | None = None
    nonfinite: torch.Tensor | None = None  # per input: a bound or slack was NaN or infinite (left open, counted)
    attack: AttackCheck | None = None
    pgd: PGDCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    indices: torch.Tensor | None = None  # each input's index in the selected inputs (default 0..n-1; a shard's)
    runs: RunDecisions | None = None  # a controlled solver's per-input steps and decisions
    shard: tuple[int, int, int] | None = None  # (i, n, inputs selected) of a `--shard i/n` report

    def index(self) -> torch.Tensor:
        return self.indices if self.indices is not None else torch.arange(self.n)

    @property
    def n(self) -> int:
        return int(self.labels.numel())

    @property
    def clean_accuracy(self) -> float:
        return float((self.predictions == self.labels).double().mean()) if self.n else 0.0

    @property
    def certified_mask(self) -> torch.Tensor:
        return self.radii >= self.eps

    @property
    def certified_accuracy(self) -> float:
        return certified_accuracy(self.radii, self.eps)

    def certified_counts(self) -> dict[str, int]:
        """How many inputs each stage certified (auto runs the cheaper ones first)."""
        return {m: self.certified_by.count(m) for m in STAGES if m in self.certified_by}

    @property
    def falsified_count(self) -> int:
        return int(self.falsified.sum()) if self.falsified is not None else 0

    @property
    def nonfinite_count(self) -> int:
        return int(self.nonfinite.sum()) if self.nonfinite is not None else 0

    @property
    def undecided_count(self) -> int:
        """Correctly classified inputs neither certified nor falsified."""
        falsified = self.falsified if self.falsified is not None else torch.zeros(self.n, dtype=torch.bool)
        return int(((self.predictions == self.labels) & ~self.certified_mask & ~falsified).sum())

    @property
    def median_radius(self) -> float:
        return float(self.radii.median()) if self.n else 0.0

    def verdicts(self) -> str:
        """One character per input: c certified, . correct but not certified, x misclassified."""
        return "".join("c" if c else ("x" if p != y else ".") for c, p, y in
                       zip(self.certified_mask.tolist(), self.predictions.tolist(), self.labels.tolist()))

    def figures(self) -> dict[str, Any]:
        """The summary of the per-input results (what `to_dict` reports and `cnode merge` recomputes from parts)."""
        return {"n": self.n, "clean_accuracy": self.clean_accuracy, "certified_accuracy": self.certified_accuracy,
                "median_radius": self.median_radius, "certified_by": self.certified_counts(),
                "falsified": self.falsified_count, "undecided": self.undecided_count,
                "nonfinite": self.nonfinite_count}

    @classmethod
    def from_samples(cls, samples: list[dict[str, Any]], *, dataset: str, norm: str, eps: float, bound: Any,
                     timing: dict[str, float], roundoff: dict[str, Any]) -> "CertifyReport":
        """A report from the per-input results of `to_dict()['samples']` (`bound`: the network bound's dict)."""
        def column(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([s.get(key, False) for s in samples], dtype=dtype)

        runs = RunDecisions(column("attempts", torch.long), column("decisions", torch.long),
                            column("decisions_proven", torch.long)) if samples and "attempts" in samples[0] else None
        return cls(dataset, norm, eps, bound, column("label", torch.long), column("prediction", torch.long),
                   column("radius", torch.float64), [s["certified_by"] for s in samples], timing, roundoff,
                   column("falsified", torch.bool), column("nonfinite", torch.bool),
                   indices=column("index", torch.long), runs=runs)

    def to_dict(self) -> dict[str, Any]:
        runs = self.runs
        per_input = [{}] * self.n if runs is None else [
            {"attempts": a, "decisions": d, "decisions_proven": p}
            for a, d, p in zip(runs.attempts.tolist(), runs.decisions.tolist(), runs.proven.tolist())]
        return {
            "dataset": self.dataset,
            "norm": self.norm,
            "eps": self.eps,
            **self.figures(),
            "bound": self.bound.to_dict() if isinstance(self.bound, NetworkBound) else self.bound,
            "roundoff": self.roundoff,
            "timing": self.timing,
            "attack_check": self.attack.to_dict() if self.attack is not None else None,
            "pgd": self.pgd.to_dict() if self.pgd is not None else None,
            "shard": None if self.shard is None else dict(zip(("index", "count", "inputs"), self.shard)),
            **({} if runs is None else {"dyadic": runs.summary(self.predictions == self.labels)}),
            "samples": [
                {"index": int(i), "label": int(y), "prediction": int(p), "radius": float(r), "certified": bool(c),
                 "certified_by": by, "falsified": f, "nonfinite": nf, **({"pgd_robust": g} if g is not None else {}),
                 **more}
                for i, y, p, r, c, by, f, nf, g, more in zip(
                    self.index().tolist(), self.labels, self.predictions, self.radii, self.certified_mask.tolist(),
                    self.certified_by, self.falsified.tolist() if self.falsified is not None else [False] * self.n,
                    self.nonfinite.tolist() if self.nonfinite is not None else [False] * self.n,
                    self.pgd.robust.tolist() if self.pgd is not None and self.pgd.robust is not None
                    else [None] * self.n, per_input)
            ],
            **self.extra,
        }


def check_eps(eps: float) -> float:
    """eps must be a finite number > 0."""
    if not isinstance(eps, (int, float)) or not (eps > 0) or eps != eps or eps == float("inf"):
        raise CNodeError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def roundoff_check(model: ConvNODE, net: Unrolled | None, sample: torch.Tensor) -> dict[str, Any]:
    """The float32 error model, checked on `sample` before any certificate is given: the float32 logits must lie
    within the derived bound of their exact values (`net`: the real-arithmetic twin; None: a controlled-solver model,
    each input against its own schedule's layers) at every sample input (else CertificateWithheldError: the arithmetic is
    not the one the bound models, e.g. TF32, FFT or Winograd convolutions); returns the observed error against the
    bound (ratios)."""
    x = sample.to(module_device(model))
    if net is None:
        z, _, runs = schedules(model, x.float())
        parts = [(idx, unroll(model, schedule=run)) for run, idx in group_by_schedule(runs).items()]
    else:
        with torch.no_grad():
            z = model(x.float())
        parts = [(list(range(len(x))), net)]
    observed, bound = torch.zeros_like(z, dtype=torch.float64), torch.zeros_like(z, dtype=torch.float64)
    for idx, part in parts:
        xi = x[idx].double()
        observed[idx] = (z[idx].double() - part(xi)).abs()
        bound[idx] = float32_error(part, local_bounds(part, xi, 0.0, "inf"))
    if bool((observed > bound).any()) or not bool(torch.isfinite(observed).all()):
        worst = int(torch.nan_to_num(observed - bound, nan=torch.inf).flatten().argmax())
        raise CertificateWithheldError(
            f"a float32 logit is {observed.flatten()[worst]:.2e} from its exact value, above the derived bound "
            f"{bound.flatten()[worst]:.2e}: this arithmetic is not the float32 model the certificate rests on "
            "(TF32, FFT or Winograd convolutions?); certificate withheld")
    ratio = (observed / bound).flatten()
    return {"model": "derived", "note": ERROR_MODEL, "sample": int(len(x)), "layer_sequences": len(parts),
            "observed_max_abs_error": float(observed.max()) if len(x) else 0.0,
            "derived_median_abs_bound": float(bound.median()) if len(x) else 0.0,
            "observed_over_derived_median": float(ratio.median()) if len(x) else 0.0,
            "observed_over_derived_max": float(ratio.max()) if len(x) else 0.0}


def schedules(model: ConvNODE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Schedule]]:
    """A controlled-solver model on x as it runs: the logits, the attempts per input and every input's schedule."""
    with eval_mode(model), torch.no_grad():
        states, attempts, runs = model.block.run(model.embedding(x), record=True)
        return model.classify(states[-1]), attempts, runs


@dataclass(frozen=True)
class CertifyPlan:
    """Everything decided before the first batch: validated options, the network bound, the unrolled layers."""

    eps: float
    norm: str
    bound: str
    tight: tuple[str, ...]
    falsify: bool
    network: NetworkBound | dict[str, Any]  # a dict for a controlled solver: no global stage
    unrolled: Unrolled | None  # the real-arithmetic twin: the derived float32 slack and the tight stages (None: a controlled solver)
    batch_size: int
    radius: bool
    roundoff: dict[str, Any]
    seconds: float
    budget: float = REFINE_SECONDS  # the refine stage's seconds per input


def plan_certification(model: ConvNODE, sample: torch.Tensor, *, eps: float, norm: str = "inf", bound: str = "auto",
                       batch_size: int = 1000, radius: bool = False, budget: float = REFINE_SECONDS) -> CertifyPlan:
    """Validate every option and combination, check float32 round-off on `sample`, compute the network bound.

    Raises CNodeError (one line) before any expensive work: bad eps / norm / bound / batch size / budget, --bound lmi
    in Linf, an adaptive solver, float32 logits too far from float64."""
    t0 = time.perf_counter()
    eps = check_eps(eps)
    check_norm(norm)
    if bound not in BOUNDS:
        raise CNodeError(f"bound must be one of {list(BOUNDS)}, got {bound!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CNodeError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float("inf"):
        raise CNodeError(f"budget must be a finite number of seconds >= 0, got {budget!r}")
    method = BOUNDS[bound]
    solver = model.config.solver
    adaptive = solver in PAIRS
    if solver not in TABLEAUS and not adaptive:
        raise CNodeError(f"solver {solver!r} chooses its steps per input (adaptive): certified radii hold for the "
                         f"fixed-step solvers {', '.join(FIXED_STEP)} as run, and for {', '.join(PAIRS)} per input")
    if adaptive and not method.tight:
        raise CNodeError(f"--bound {bound} bounds one layer sequence for every input; a {solver} model runs its own "
                         "per input: use --bound local, crown, linear or auto")
    if adaptive and radius:
        raise CNodeError(f"--radius bisects over one layer sequence; a {solver} model's depends on the input: certify "
                         "at --eps")
    tight = method.tight
    if method.lmi and norm != "2":
        raise CNodeError("the LMI certifies the 2-norm: use --norm 2 with --bound lmi")
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise CNodeError("the model has non-finite weights (NaN or inf): nothing can be certified")
    net = None if adaptive else unroll(model)
    with eval_mode(model):
        roundoff = roundoff_check(model, net, sample)
    spec = model.block.spec()
    certs = block_certificates(spec)
    if method.lmi:
        from contraction.lmi import lmi_block_certificate

        lmi = lmi_block_certificate(spec)
        if not lmi.certified:
            raise CertificateWithheldError(f"LMI certificate not available: {lmi.status}: {lmi.condition}")
        certs = [lmi]
    network: NetworkBound | dict[str, Any] = {
        "method": f"{solver}: each input's schedule unrolled (no weight-only bound: the steps differ per input)",
        "norm": norm} if adaptive else best_network_bound(model, norm, certs)
    return CertifyPlan(eps=eps, norm=norm, bound=bound, tight=tight, falsify=method.falsify and bool(tight),
                       network=network, unrolled=net,
                       batch_size=batch_size if not tight else min(batch_size, 100), radius=radius and bool(tight),
                       roundoff=roundoff, seconds=time.perf_counter() - t0, budget=float(budget))


@dataclass
class BatchResult:
    """One batch: predictions, proven radii, the stage that certified each input, falsified inputs, seconds per
    stage."""

    labels: torch.Tensor
    predictions: torch.Tensor
    radii: torch.Tensor
    certified_by: list[str]
    falsified: torch.Tensor
    nonfinite: torch.Tensor
    seconds: dict[str, float]
    runs: RunDecisions | None = None


def _falsifier(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, norm: str):  # -> certify.bounds.tight.Falsify
    """The escalation's attack on inputs `idx` of the batch at eps: PGD (margin loss, fixed seed) on the model as it
    runs; True where it found an adversarial input."""
    def falsify(idx: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        e = float32_below(eps)  # the attack's ball inside the one asked about: no false 'falsified'
        adv = pgd(model, x[idx], y[idx], eps=e, norm=norm, steps=FALSIFY_STEPS, loss="margin")
        return is_adversarial(model, adv, y[idx])
    return falsify


def _global_radii(plan: CertifyPlan, z: torch.Tensor, y: torch.Tensor, x64: torch.Tensor,
                  err: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """Lipschitz radii of the float32 network: min_j (z_y - z_j - c_yj - s_yj) / L_yj, s_yj the margin's float32 slack
    over the ball (paid at the point in the ball) and c_yj the one at the input itself (its float32 margin read off
    the logits run: the error bound over the one-point set, far below the ball's for large L2 balls; at most s_yj).
    c is derived only for the inputs the global stage may certify (`reach`: radius >= eps with no slack at all); the
    others pay s twice, a smaller radius that is still proven.

    Derived slack (`err`: the error bound over the eps-ball): a radius r0 > eps needs the bound over its own ball, so
    those inputs get it recomputed over the r0-ball (the whole pixel box at most) and keep the smaller radius, never
    below eps (r0 >= eps was proven with the eps-ball's slack)."""
    L = plan.network.constants().to(z.device)
    net = plan.unrolled
    slack = margin_slack(err, y)
    centre = slack.clone()
    near = torch.nonzero(reach).flatten()
    if len(near):
        x0 = x64[near]
        own = margin_slack(ball_error(net, x0, 0.0, plan.norm, local_bounds(net, x0, 0.0, plan.norm)), y[near])
        centre[near] = torch.minimum(own, slack[near])  # the input lies in its ball: the ball's bound holds there too
    r = certified_radii(z, y, L, centre + slack)
    wide = torch.nonzero(r > plan.eps).flatten()
    if len(wide):
        whole = 1.0 if plan.norm == "inf" else float(x64[0].numel()) ** 0.5  # a larger ball is the whole pixel box
        ball = r[wide].clamp(max=whole)
        e = ball_error(net, x64[wide], ball, plan.norm, local_bounds(net, x64[wide], ball, plan.norm))
        r1 = certified_radii(z[wide], y[wide], L, centre[wide] + margin_slack(e, y[wide]))
        r1 = torch.where(ball < whole, torch.minimum(r1, ball), r1)
        r[wide] = torch.maximum(r1, torch.full_like(r1, plan.eps))
    return r


def _proven_by_hull(plan: CertifyPlan, z: torch.Tensor, y: torch.Tensor, bounds: LayerBounds, cand: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B] bool: the inputs `cand` (correct ones the global stage cannot certify at eps) that the local stage proves
    with one slack for all of them, the float32 error bound over the hull of their boxes in `bounds` (`hull_error`: it
    holds every such input's set); `bounds`: IBP's boxes or the local stage's, which are never wider (every local box
    is met with IBP's chain). Such an input needs no float32 bound of its own: the verdict ('local') and the radius
    (eps) are the ones the local stage with its own, smaller bound gives (its boxes and margins are at least as
    tight, and the bound only grows with the boxes; tests/test_certify/test_roundoff.py). Also returns the hull's
    bound [1, K] (None where none was computed)."""
    none = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    idx = torch.nonzero(cand).flatten()
    if not plan.tight or plan.tight[0] != "local" or not len(idx):
        return none, None
    net, sub = plan.unrolled, bounds.select(idx)
    err = hull_error(net, sub)  # type: ignore[arg-type]
    m = box_margins(net, y[idx], sub.lo, sub.hi)  # type: ignore[arg-type]
    none[idx] = ~unproven(m, margin_slack(err.expand(len(idx), -1), y[idx])).any(1)  # fail closed: NaN proves nothing
    return none, err


def _batch_boxes(plan: CertifyPlan, z: torch.Tensor, y: torch.Tensor, x64: torch.Tensor, reach: torch.Tensor
                 ) -> tuple[LayerBounds, torch.Tensor, torch.Tensor]:
    """The boxes of every input, the inputs the local stage proves under a hull's slack (`_proven_by_hull`), and
    their logits' float32 bound [B, K] (0 on the other rows). Cheap first: IBP's boxes (about half the cost of the
    local ones) with their hull's slack; the local boxes (and their hull's slack) only for the inputs that leaves
    open. A row proven by IBP keeps its IBP boxes (nothing later reads them)."""
    net = plan.unrolled
    err = torch.zeros(len(y), z.shape[1], dtype=torch.float64, device=y.device)
    cand = (z.argmax(1) == y) & ~reach
    if not plan.tight or plan.tight[0] != "local" or not bool(cand.any()):
        return local_bounds(net, x64, plan.eps, plan.norm), torch.zeros_like(cand), err  # type: ignore[arg-type]
    ibp = ibp_bounds(net, x64, plan.eps, plan.norm)  # type: ignore[arg-type]
    early, hull = _proven_by_hull(plan, z, y, ibp, cand)
    if hull is not None:
        err[early] = hull.to(err.dtype)
    rest = torch.nonzero(~early).flatten()
    if not len(rest):
        return ibp, early, err
    boxes = ibp.with_rows(rest, local_bounds(net, x64[rest], plan.eps, plan.norm))  # type: ignore[arg-type]
    late, hull = _proven_by_hull(plan, z, y, boxes, cand & ~early)
    if hull is not None:
        err[late] = hull.to(err.dtype)
    return boxes, early | late, err


def _own_errors(plan: CertifyPlan, x64: torch.Tensor, local: LayerBounds, rows: torch.Tensor,
                err: torch.Tensor) -> "Float32Terms | None":
    """The float32 terms over the balls of inputs `rows` (their logits' bounds written into `err`)."""
    if not len(rows):
        return None
    net, sub = plan.unrolled, local.select(rows)
    terms = ball_terms(net, x64[rows], plan.eps, plan.norm, sub)  # type: ignore[arg-type]
    err[rows] = terms.errors[-1] if terms is not None else \
        ball_error(net, x64[rows], plan.eps, plan.norm, sub)  # type: ignore[arg-type]
    return terms


def certify_batch(plan: CertifyPlan, model: ConvNODE, x: torch.Tensor, y: torch.Tensor) -> BatchResult:
    """Global radii for every input, then the plan's tight stages, escalated, on the correct inputs still
    uncertified; every margin's slack is the float32 error bound over its ball (derived, Euler models).

    The float32 bound of each input's own ball costs about as much as its boxes; the inputs the local stage proves
    with a hull's one (looser) bound (`_batch_boxes`: IBP's boxes first, then the local ones) skip it, the others
    get their own."""
    if plan.unrolled is None:
        return _dyadic_batch(plan, model, x, y)
    seconds = dict.fromkeys(STAGES, 0.0)
    ts = time.perf_counter()
    device = module_device(model)
    x, y = x.to(device), y.to(device)
    with eval_mode(model), torch.no_grad():
        z = model(x)
    net, tight = plan.unrolled, plan.tight
    x64 = x.to(torch.float64)
    reach = certified_radii(z, y, plan.network.constants().to(device)) >= plan.eps  # type: ignore[union-attr]
    local, early, err = _batch_boxes(plan, z, y, x64, reach)  # err: the hull's bound on the `early` rows
    seconds["local" if tight else "global"] += time.perf_counter() - ts  # the boxes: the local stage's cost
    ts = time.perf_counter()
    own = torch.nonzero(~early).flatten()
    terms = _own_errors(plan, x64, local, own, err)  # the other rows' own bounds
    slack = margin_slack(err, y)
    r = _global_radii(plan, z, y, x64, err, reach)
    nonfinite = ~torch.isfinite(z).all(1) | ~torch.isfinite(err).all(1)
    ok = r >= plan.eps
    names = ["global" if c else "" for c in ok.tolist()]
    for i in torch.nonzero(early).flatten().tolist():
        names[i] = "local"
    r[early] = plan.eps  # certified at eps: the closed eps-ball is proven
    falsified = torch.zeros(len(y), dtype=torch.bool)
    seconds["global"] += time.perf_counter() - ts
    todo = torch.nonzero(~ok & ~early & (z.argmax(1) == y)).flatten()
    if terms is not None and len(todo):  # the terms of `own`, re-indexed to `todo` (a subset of `own`)
        pos = torch.full((len(y),), -1, dtype=torch.long, device=device)
        pos[own] = torch.arange(len(own), device=device)
        terms = terms.select(pos[todo])
    if len(todo) and tight:
        hook = _falsifier(model, x[todo], y[todo], plan.norm) if plan.falsify else None
        esc = escalate(net, x64[todo], y[todo], plan.eps, plan.norm, tight, slack[todo], hook, local.select(todo),
                       plan.budget, terms)
        for i, s in zip(todo.tolist(), esc.stage.tolist()):
            if s >= 0:
                names[i] = tight[s]
        r[todo[esc.certified]] = plan.eps  # certified at eps: the closed eps-ball is proven
        falsified[todo.cpu()] = esc.falsified.cpu()
        nonfinite[todo] |= esc.nonfinite
        for k, v in esc.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    if plan.radius:
        ts = time.perf_counter()
        good = torch.nonzero(z.argmax(1) == y).flatten()
        if len(good):
            hook = _falsifier(model, x[good], y[good], plan.norm) if plan.falsify else None
            r[good] = tight_radii(net, x64[good], y[good], plan.norm, tight[-1], None, r[good],
                                  RADIUS_CAP[plan.norm], falsify=hook, refine_seconds=plan.budget)  # slack: every eps
        seconds["radius"] = time.perf_counter() - ts
    return BatchResult(y.cpu(), z.argmax(1).cpu(), r.cpu(), names, falsified, nonfinite.cpu(),
                       {k: v for k, v in seconds.items() if v > 0})


def _dyadic_batch(plan: CertifyPlan, model: ConvNODE, x: torch.Tensor, y: torch.Tensor) -> BatchResult:
    """A controlled-solver batch: the inputs grouped by the schedule their run takes; per group its layers, the
    decisions' proofs over each ball, and the plan's tight stages on the correct inputs whose every decision is
    proven."""
    seconds: dict[str, float] = {}
    device = module_device(model)
    x, y = x.to(device), y.to(device)
    z, attempts, runs = schedules(model, x)
    x64 = x.to(torch.float64)
    B = len(y)
    r = torch.zeros(B, dtype=torch.float64, device=device)
    names = [""] * B
    falsified = torch.zeros(B, dtype=torch.bool)
    nonfinite = ~torch.isfinite(z).all(1)
    made, proven = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    ctl = model.block.controller
    hook = _falsifier(model, x, y, plan.norm) if plan.falsify else None
    for run, members in group_by_schedule(runs).items():
        idx = torch.tensor(members, device=device)
        good = idx[z[idx].argmax(1) == y[idx]]
        if not len(good):
            continue
        net = unroll(model, schedule=run)
        local = local_bounds(net, x64[good], plan.eps, plan.norm)
        ds = decisions(run, ctl.max_halvings, ctl.pair.grow)
        td = time.perf_counter()
        proofs = decision_proofs(net, x64[good], plan.eps, plan.norm, local, ds, ctl.threshold)
        seconds["decisions"] = seconds.get("decisions", 0.0) + time.perf_counter() - td
        made[good.cpu()], proven[good.cpu()] = len(ds), proofs.sum(1).cpu()
        err = ball_error(net, x64[good], plan.eps, plan.norm, local)
        nonfinite[good] |= ~torch.isfinite(err).all(1)
        keep = proofs.all(1)
        todo = good[keep]
        if not len(todo):
            continue
        sub = None if hook is None else (lambda i, e, todo=todo: hook(todo[i], e))
        esc = escalate(net, x64[todo], y[todo], plan.eps, plan.norm, plan.tight, margin_slack(err[keep], y[todo]),
                       sub, local.select(keep))
        for i, stage in zip(todo.tolist(), esc.stage.tolist()):
            if stage >= 0:
                names[i] = plan.tight[stage]
        r[todo[esc.certified]] = plan.eps
        falsified[todo.cpu()] = esc.falsified.cpu()
        nonfinite[todo] |= esc.nonfinite
        for k, v in esc.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    return BatchResult(y.cpu(), z.argmax(1).cpu(), r.cpu(), names, falsified, nonfinite.cpu(),
                       {k: v for k, v in seconds.items() if v > 0}, RunDecisions(attempts.cpu(), made, proven))


@exact_float32()
def _certify(model: ConvNODE, name: str, sample: torch.Tensor, chunks: Callable[[range, int], Iterable[tuple]],
             n: int, *, eps: float, norm: str, bound: str, batch_size: int, progress: bool, radius: bool,
             device: str | torch.device | None, shard: tuple[int, int] | None = None, dist: Dist = SINGLE,
             budget: float = REFINE_SECONDS) -> CertifyReport:
    """plan (validation, round-off check on `sample`, network bound) -> batches from `chunks(indices, size)` ->
    report. `shard` (i, n): only shard i of n of the inputs (contiguous whole batches); `dist`: the ranks split the
    inputs the same way and every rank gets the gathered report. Batches are those of the one-process run, so every
    per-input result is identical to it. On CUDA everything runs in IEEE float32 (TF32 off, `exact_float32`): the
    arithmetic the round-off check measures and the certificate is for."""
    t0 = time.perf_counter()
    sample = sample.to(place(model, dist.device if dist.distributed else device))
    plan = plan_certification(model, sample, eps=eps, norm=norm, bound=bound, batch_size=batch_size, radius=radius,
                              budget=budget)
    t1 = time.perf_counter()
    span = range(n) if shard is None else batch_shard(n, plan.batch_size, *shard)
    part = batch_shard(len(span), plan.batch_size, dist.rank, dist.world)
    mine = span[part.start:part.stop]
    it: Iterable[tuple] = chunks(mine, plan.batch_size)
    if progress and dist.main:  # a live bar on a terminal, nothing in a log file (tqdm's disable=None)
        it = tqdm(it, total=(len(mine) + plan.batch_size - 1) // plan.batch_size, desc=f"certify ({bound})",
                  leave=False, disable=None)
    results = [certify_batch(plan, model, x, y) for x, y in it]
    if dist.distributed:
        results = [b for part in dist.all_gather(results) for b in part]
    seconds = {f"{m}_seconds": sum(b.seconds.get(m, 0.0) for b in results)
               for m in STAGES + ("attack", "radius", "decisions")}
    runs = [b.runs for b in results if b.runs is not None]
    return CertifyReport(
        dataset=name,
        norm=plan.norm,
        eps=plan.eps,
        bound=plan.network,
        labels=torch.cat([b.labels for b in results]) if results else torch.zeros(0, dtype=torch.long),
        predictions=torch.cat([b.predictions for b in results]) if results else torch.zeros(0, dtype=torch.long),
        radii=torch.cat([b.radii for b in results]) if results else torch.zeros(0, dtype=torch.float64),
        certified_by=[by for b in results for by in b.certified_by],
        falsified=torch.cat([b.falsified for b in results]) if results else torch.zeros(0, dtype=torch.bool),
        nonfinite=torch.cat([b.nonfinite for b in results]) if results else torch.zeros(0, dtype=torch.bool),
        timing={"bound_seconds": plan.seconds, "certify_seconds": time.perf_counter() - t1,
                "total_seconds": time.perf_counter() - t0, **{k: v for k, v in seconds.items() if v > 0}},
        extra={"bound_mode": bound, "radius_bisection": plan.radius, "processes": dist.world,
               **({"budget_seconds": plan.budget} if "refine" in plan.tight else {})},
        roundoff=plan.roundoff,
        indices=torch.arange(span.start, span.stop),
        shard=None if shard is None else (shard[0], shard[1], n),
        runs=RunDecisions.cat(runs) if runs else None,
    )


def certify_model(model: ConvNODE, data: ImageData, *, eps: float, norm: str = "inf", bound: str = "auto",
                  batch_size: int = 1000, progress: bool = False, radius: bool = False,
                  device: str | torch.device | None = None, shard: tuple[int, int] | None = None,
                  dist: Dist = SINGLE, budget: float = REFINE_SECONDS) -> CertifyReport:
    """Certify every input of a dataset at eps (see `certify_tensors`; images are converted batch by batch).

    bound (`BOUNDS`): 'global' (weight bounds) or 'lmi' (LMI block) -> Lipschitz radii; 'local' / 'crown' /
    'auto' -> the global radii, then the tight certificates over the eps-ball on the inputs still uncertified
    (Euler models). `radius=True` bisects the tight radius of every correct input. `device`: None certifies where
    the model is; 'auto' / 'cpu' / 'cuda' moves the model there first. The report's tensors are on the CPU.
    `shard=(i, n)`: certify only shard i of n of the inputs (contiguous whole batches; `certify.merge` joins the
    parts); `dist` (nodes.distributed, e.g. under torchrun): the ranks split the inputs and all get the gathered
    report. Either way each input's result is identical to the one-process report's. `budget`: the refine stage's
    seconds per input (auto's last stage; its verdicts then depend on the machine's speed)."""
    return _certify(model, data.name, data.tensors(0, min(len(data), 64))[0],
                    lambda r, size: batches(data.slice(r.start, r.stop), size), len(data), eps=eps, norm=norm,
                    bound=bound, batch_size=batch_size, progress=progress, radius=radius, device=device, shard=shard,
                    dist=dist, budget=budget)


def certify_tensors(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "inf",
                    bound: str = "auto", batch_size: int = 1000, progress: bool = False, radius: bool = False,
                    name: str = "tensors", device: str | torch.device | None = None,
                    budget: float = REFINE_SECONDS) -> CertifyReport:
    """Certify float images `x` [N, C, S, S] with values in [0, 1] and integer labels `y` [N] at eps.

    The threat model is the eps-ball intersected with the pixel box [0, 1]; inputs outside it are refused."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() != 4 or y.dim() != 1 \
            or x.shape[0] != y.shape[0]:
        got = (tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__,
               tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__)
        raise DataError(f"expected images [N, C, S, S] and labels [N], got {got[0]} and {got[1]}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()) or bool((x < 0).any() | (x > 1).any()):
        raise DataError("images must be finite floats in [0, 1] (the certified set is clipped to the pixel box)")
    if y.dtype not in (torch.int64, torch.int32) or bool((y < 0).any() | (y >= model.config.num_classes).any()):
        raise DataError(f"labels must be integers in [0, {model.config.num_classes - 1}]")
    x, y = x.float(), y.long()
    return _certify(model, name, x[:64], lambda r, size: ((x[i:min(i + size, r.stop)], y[i:min(i + size, r.stop)])
                                                          for i in range(r.start, r.stop, size)),
                    len(y), eps=eps, norm=norm, bound=bound, batch_size=batch_size, progress=progress, radius=radius,
                    device=device, budget=budget)
