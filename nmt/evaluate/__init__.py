"""Evaluation: sacreBLEU metrics and paired significance tests."""
