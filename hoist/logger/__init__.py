"""Runs inside each training rank: naming, filtering, staging, enqueue, wait."""
