"""The model core: bundle, scaling, windowing, models, runtimes, window scoring, thresholds and hysteresis."""
