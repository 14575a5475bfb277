"""Fine-tuning: settings (config), the text (data), the loop (loop, results, divergence, evaluation, rng),
optimizer views (optimizer), which parts train (parts), checkpoints, before/after (compare), the CLI (cli)."""
