"""bids_synth."""
