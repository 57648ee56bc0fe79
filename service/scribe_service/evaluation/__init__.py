"""`scribe eval`: measure how well the rewards match human step labels, against baselines."""
