"""dcrec.models."""
