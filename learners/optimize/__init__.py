"""Making a fine-tuned classifier smaller or faster, and measuring what that cost against its parent.

``quantize`` writes int8 (dynamic or static) or half-precision copies, quantizing only the layers
whose measured sensitivity allows it; ``report`` compares any optimized copy with its parent on
the same held-out split: size, non-zero parameters, latency, throughput, metric deltas, grade.
"""
