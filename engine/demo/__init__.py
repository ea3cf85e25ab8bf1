"""attimo demo: seed people, a local SMTP outbox, and nothing the product needs."""
