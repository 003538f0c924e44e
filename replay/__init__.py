"""dcrec.replay."""
