-- Runs once, when the postgres-data volume is empty: MLflow's tracking and registry store lives
-- in its own database next to learnloop's (the feedback store and training jobs).
CREATE DATABASE mlflow;
