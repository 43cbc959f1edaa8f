"""Training for Maata's models: the codec trainer, its losses and discriminators, distributed
launch and resumable checkpoints. ``maata train codec`` (training/commands.py) is the entry."""
