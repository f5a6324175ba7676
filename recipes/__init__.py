"""Coordination recipes, built only on the Backend contract (imported as ``coordkit.recipes``)."""
