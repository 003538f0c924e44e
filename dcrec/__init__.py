"""dcrec.dcrec."""
