"""Getting a model version to the workers: the artifact store, the quality gate, publishing and the
announcements on the model-updates topic. Training publishes through it; the worker follows it."""
