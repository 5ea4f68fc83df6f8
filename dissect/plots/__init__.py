"""Matplotlib figures, one module per stage; every function returns a Figure (never shows it)."""
