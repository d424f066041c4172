"""toy experiment configurations."""
