"""Attacks on a real attimo serve with only what a browser has (the public site
key), each asserting that it now fails safely."""
