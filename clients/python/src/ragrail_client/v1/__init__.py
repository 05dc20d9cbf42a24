"""Generated gateway stubs (scripts/gen_client_protos.py); do not edit."""
