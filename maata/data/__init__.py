"""Speech and dialogue data: corpus synthesis (espeak-ng, festival), loaders for the public
Telugu datasets, manifests, augmentation, the scripted conversations, and code shards.

Imports nothing at package level so the CLI stays fast; import the submodules directly.
"""
