"""What decisions earned: learning counts, hold-out and experiment exposures and their conversions, the decision log and its offline evaluation. Written off the request path."""
