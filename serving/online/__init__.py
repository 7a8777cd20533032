"""Real-time features: raw events in, per-key state, the use case's online features out."""
