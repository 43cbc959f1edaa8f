"""Maata (మాట, "speech"): real-time, full-duplex Telugu speech-to-speech.

The model library: pure PyTorch modules and audio math, no network I/O. Services and
training are thin layers over it.
"""

__version__ = "0.1.0"
