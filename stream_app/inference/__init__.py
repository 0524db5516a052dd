"""The recommender core, free of faust: a click's parsing, its session's state, the model's scoring and the
suggestion, and how a suggestion is judged. The worker, the quality gate and training all serve through it."""
