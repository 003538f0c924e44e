"""dcrec.infra."""
