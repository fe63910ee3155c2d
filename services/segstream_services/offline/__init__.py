"""The offline path: segment a historical file (fit) and evaluate segments (eval)."""
