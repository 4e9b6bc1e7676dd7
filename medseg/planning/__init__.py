"""``medseg plan``: a data set's fingerprint and a complete, commented config chosen from it."""
