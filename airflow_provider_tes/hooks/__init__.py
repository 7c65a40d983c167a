"""hooks of the TES provider."""
