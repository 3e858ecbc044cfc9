"""Generated gRPC modules for shoal.v1 (scripts/gen_protos.py)."""
