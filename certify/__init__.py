"""Certified robustness of ConvNODE classifiers. Where things live:

certify/bounds/ -- the bound engine (no progress bars, no processes, no training loop; knows the model, not the CLI):
    layers.py      the layer types, each with every rule (forward, Lipschitz, interval, mean-value box, backward,
                   symbolic, float32 round-off)
    relax.py       sound linear relaxations of the activation on an interval
    unrolled.py    `unroll`: a ConvNODE as run -> a sequence of layers (the one place that reads the model)
    local.py       IBP and the mean-value boxes of every layer over an eps-ball; margins from boxes
    crown.py       one backward (CROWN-style) pass over the boxes
    linear.py      the linear stage: forward symbolic intermediate bounds, then a backward pass
    tight.py       the per-input escalation local -> crown -> linear (with a falsifier hook) and tight radii
    lipschitz.py   the global bound: the network's pairwise Lipschitz constants, block certificates as run
    radius.py      radii from margins and constants; float32 margins
    roundoff.py    the float32 error of the network as run, carried to the logits
    attacks.py     the falsifiers: PGD, FGSM, Square (and the eps-ball's projection)
    objectives.py  certified training losses keyed by `TrainConfig.certified_method` (imported by nodes.train)
certify/ -- the application around it:
    run.py         certify a model or tensors: the plan, batches, gathering over processes, `CertifyReport`
    checks.py      the attack check and the PGD check of a report
    report.py      printing, JSON and plots of a report; merge.py joins sharded reports
    robustness.py  the evaluation protocol (noise, attacks, certified); study.py trains and evaluates the study
    noise.py       Gaussian and salt-and-pepper noise
    export.py      ONNX export of the network as run (each layer's `export` rule), checked by ONNX Runtime; VNN-LIB
    cli/           `cnode` and `certify`: one module per subcommand group, thin over the calls above

Imports run one way: contraction <- nodes' model <- certify.bounds <- nodes.train <- the application <- cli
(tests/test_layout.py). The names below load on first use, so importing the engine loads nothing of the rest."""

from __future__ import annotations

from contraction import __version__
from contraction.lazy import lazy_exports

_EXPORTS = {
    "certify_model": "certify.run", "certify_tensors": "certify.run", "CertifyReport": "certify.run",
    "AttackCheck": "certify.checks", "attack_check": "certify.checks",
    "NetworkBound": "certify.bounds.lipschitz", "network_bounds": "certify.bounds.lipschitz",
    "best_network_bound": "certify.bounds.lipschitz",
    "certified_radii": "certify.bounds.radius", "certified_accuracy": "certify.bounds.radius",
    "pgd": "certify.bounds.attacks", "fgsm": "certify.bounds.attacks", "square": "certify.bounds.attacks",
    "gaussian_noise": "certify.noise", "salt_and_pepper": "certify.noise",
    "to_onnx": "certify.export", "check_onnx": "certify.export", "write_benchmark": "certify.export",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports("certify", _EXPORTS, globals())
