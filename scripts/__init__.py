"""Report rendering and small maintenance entry points."""
