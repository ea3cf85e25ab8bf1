"""Follow-ups: journeys, due queue, contact policy, channels, scheduler, KPIs."""
