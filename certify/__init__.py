"""Certified robustness of ConvNODE classifiers."""
