"""Object stores: one interface, three backends."""
