"""Uploaded recordings: decode a file, cut it into chunks at pauses, transcribe each chunk."""
