"""Training engine: mesh and sharding rules, optimizers, checkpoints, the trainer."""
