"""PatchCore anomaly detection: fit on good images, score and locate defects."""

__version__ = "0.1.0"
