"""Engine events to numbered segments: numbered, kept durable, published, repaired."""
