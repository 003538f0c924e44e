"""dcrec.state."""
