"""Everything after a decision: journey transitions (pure) and their runner, the due queue, contact state, inbox and devices, KPIs, the scheduler, and channels/ that send."""
