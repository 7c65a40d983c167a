"""triggers of the TES provider."""
