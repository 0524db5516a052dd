"""Training each model: GRU4Rec, NARM and DIEN, with their losses, negative sampling, optimiser and device."""
