"""Contraction analysis of slope-restricted ConvNODE vector fields: log-norms, conv facts, Jacobian probes,
weight certificates and regularizers."""

__version__ = "0.4.0"

from contraction.certificates import BlockSpec, Certificate, block_certificates, verdict
from contraction.errors import CNodeError
from contraction.jacobian import mu_1_at, mu_2_estimate, mu_inf_at
from contraction.measures import mu_1, mu_2, mu_2_weighted, mu_inf, mu_inf_weighted
from contraction.regularizers import REG_TARGETS, jacobian_hinge, jacobian_log_norm, jacobian_step_norm, weight_hinge
from contraction.slopes import ACTIVATIONS, Activation, get_activation
from contraction.weights import contractive_kernel, step_rate_limit

__all__ = [
    "__version__",
    "CNodeError",
    "Activation",
    "ACTIVATIONS",
    "get_activation",
    "mu_1",
    "mu_2",
    "mu_inf",
    "mu_inf_weighted",
    "mu_2_weighted",
    "mu_inf_at",
    "mu_1_at",
    "mu_2_estimate",
    "weight_hinge",
    "jacobian_hinge",
    "jacobian_log_norm",
    "jacobian_step_norm",
    "REG_TARGETS",
    "contractive_kernel",
    "step_rate_limit",
    "verdict",
    "BlockSpec",
    "Certificate",
    "block_certificates",
]
