"""The console (/console) for marketers and ops: sessions, and its pages in a real Chromium."""
