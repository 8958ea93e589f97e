"""Camera capture: sources, newest-frame sampling, change gating and masks."""
