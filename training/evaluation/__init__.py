"""How a model is judged offline: next-item ranks and metrics, the baselines, the plots."""
