"""The encoder service (segstream run encoder)."""
