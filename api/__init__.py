"""The HTTP API: app (create_app), http helpers, errors mapped to status codes,
and routes/ one module per resource."""
