"""Ray Data operators, one step each, thin wrappers over the codec (they arrive with the archive pipeline)."""
