"""The website snippet in a real Chromium."""
