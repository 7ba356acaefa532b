"""The founding deep-learning fusion models (one file each) and their shared pieces."""
