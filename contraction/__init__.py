"""Contraction analysis of slope-restricted ConvNODE vector fields."""

from contraction.errors import CNodeError
from contraction.slopes import ACTIVATIONS, Activation, get_activation

__all__ = ["CNodeError", "Activation", "ACTIVATIONS", "get_activation"]
