"""Data preparation tools behind `sorakit data ...`: scene splitting, clip cutting, probing, CSV
utilities, captioning, dataset converters, synthetic data. They talk to training only through CSV files."""
