"""The method itself: the detector base, PatchCore, patch features, scoring, coreset sampling, thresholds."""
