"""One module per resource; api/app.py mounts their ROUTES."""
