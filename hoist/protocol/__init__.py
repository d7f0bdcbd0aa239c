"""The contract between ranks and the fleet: messages, signatures, the staging layout, pointers."""
