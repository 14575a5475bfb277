"""Fine-tuning: settings, the loop, optimizer views, checkpoints, before/after and the background job."""
