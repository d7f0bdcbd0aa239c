"""The worker fleet: launching workers (and, later, Flower and the local cluster)."""
