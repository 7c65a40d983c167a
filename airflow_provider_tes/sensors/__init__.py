"""sensors of the TES provider."""
