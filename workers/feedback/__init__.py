"""The feedback worker process: its wiring, its Redis state store and its SQL sample sink."""
