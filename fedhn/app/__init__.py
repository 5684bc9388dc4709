"""The Flower app's machinery: run config, the task (data, model, training per client), checkpoints,
results, fault injection and the federated calibration protocol. The thin Flower adapters
(:mod:`fedhn.server_app`, :mod:`fedhn.client_app`) call into it."""
