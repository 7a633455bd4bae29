"""Documented keys of the chart's subcharts, and the checks and CRD schemas built on them."""
