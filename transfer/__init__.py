"""Transfer half of RAST: decode a large base model with a small model pair's RL delta."""
