"""Experiments that change one vector inside the model and compare the output with the original run."""
