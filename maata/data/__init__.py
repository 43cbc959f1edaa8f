"""Packaged data: the scripted Telugu conversations (see :mod:`maata.data.conversations`)."""
