"""dcrec.streams."""
