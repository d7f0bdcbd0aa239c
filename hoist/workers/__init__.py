"""The worker fleet: workers, Flower, and the local cluster of `hoist up`."""
