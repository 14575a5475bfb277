"""One forward pass traced into a `Trace`, and the maths of every station that reads it."""
