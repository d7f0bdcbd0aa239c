"""hoist: a distributed uploader for the artifacts of multi-node ML training."""

__version__ = "0.1.0"
