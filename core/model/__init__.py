"""Models: the family registry, loading (bundled, Hub cache, local folders) and model identity."""
