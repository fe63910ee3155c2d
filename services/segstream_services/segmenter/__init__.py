"""The segmenter service (segstream run segmenter)."""
