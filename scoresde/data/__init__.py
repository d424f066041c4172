"""Data: the data sets, their model-space pipeline, the batch loader and the seeded random streams."""
