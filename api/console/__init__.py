"""The console for marketers and ops at /console: sessions (session.py) and the
pages that sign in, out and serve each page's shell (pages.py); the pages'
scripts and styles are api/static/console/. docs/console.md describes it."""
