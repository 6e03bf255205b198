"""The conversation worker process: spaCy extraction into the knowledge graph."""
