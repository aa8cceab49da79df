"""Metrics, the evaluate command, calibration and reports."""
