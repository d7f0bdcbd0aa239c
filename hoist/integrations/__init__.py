"""Adapters that plug hoist into trainers: Composer (:mod:`hoist.integrations.composer`),
Hugging Face (:mod:`hoist.integrations.huggingface`) and PyTorch Lightning
(:mod:`hoist.integrations.lightning`). Each imports its trainer's package, so import the
one you use."""
