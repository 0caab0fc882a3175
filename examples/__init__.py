"""Runnable example agents."""
