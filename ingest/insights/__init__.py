"""Meeting insights: tips pulled from finals while a meeting runs, and notes after it ends."""
