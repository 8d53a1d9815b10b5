"""anomalyd: streaming anomaly detection for industrial sensors."""

__version__ = "0.1.0"
