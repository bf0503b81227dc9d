"""The analysis layer: pandas tables of models, jobs and spend, and sweeps over parameters."""
