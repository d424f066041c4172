"""digits experiment configurations."""
