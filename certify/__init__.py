"""Certified robustness of ConvNODE classifiers: Lipschitz bounds, radii, attacks, noise."""

from contraction import __version__
from certify.attacks import fgsm, pgd, square
from certify.lipschitz import NetworkBound, best_network_bound, network_bounds
from certify.noise import gaussian_noise, salt_and_pepper
from certify.radius import certified_accuracy, certified_radii
from certify import training as _training  # noqa: F401  (registers the certified objectives for nodes.train)
from certify.run import AttackCheck, CertifyReport, attack_check, certify_model, certify_tensors

__all__ = [
    "__version__",
    "certify_model",
    "certify_tensors",
    "AttackCheck",
    "attack_check",
    "CertifyReport",
    "NetworkBound",
    "network_bounds",
    "best_network_bound",
    "certified_radii",
    "certified_accuracy",
    "pgd",
    "fgsm",
    "square",
    "gaussian_noise",
    "salt_and_pepper",
]
