"""Burn: backdoor unlearning via adversarial boundary analysis (a reproduction)."""

__version__ = "0.1.0"
