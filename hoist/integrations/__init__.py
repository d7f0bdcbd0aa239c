"""Adapters that plug hoist into trainers (Composer, ...)."""
