"""Training-side MLflow integration: the registry and the stand-alone serving model."""
