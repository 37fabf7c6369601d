"""Measuring detectors: AUROC and PRO, per-category evaluation, the HTML report, the paper's experiments."""
