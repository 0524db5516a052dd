"""The faust worker: topics, the session table and the agent that serves clicks in batches, its metrics,
dead letters, model swaps and canary routing, and the one adapter over faust's and aiokafka's internals."""
