"""Audiences: who is in a tracked segment right now (membership kept as people
enter and leave), where that goes (webhook destinations, customer-list exports
for ad platforms), and how people are found by a hashed email or phone."""
