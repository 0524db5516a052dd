"""`--tune N`: the hyper-parameter search and the spaces it searches."""
