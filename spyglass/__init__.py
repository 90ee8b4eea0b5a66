"""Spyglass: see when your smart speakers upload audio."""

__version__ = "0.1.0"
