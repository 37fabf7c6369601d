"""The paper's baselines and ensembles on the same backbones: SPADE, PaDiM, Ensemble."""
