"""operators of the TES provider."""
