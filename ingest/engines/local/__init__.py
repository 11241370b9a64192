"""The embedded offline engine: recognition in a pool of worker processes."""
