"""Sections of the experiments station ("What if?"), one module per experiment."""
