"""Senders the scheduler calls: email over SMTP, webhooks (push, SMS, operator alerts)."""
