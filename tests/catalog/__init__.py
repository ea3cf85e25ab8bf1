"""The catalog language: conditions and windows."""
