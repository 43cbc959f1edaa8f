"""Maata's microservices: thin gRPC adapters over the model library (codec, generation,
session store, gateway). ``maata serve`` runs them all in one process or one per process."""

from services import protogen

protogen.ensure()  # the gRPC code in maata/v1 is build output: make sure it is there and fresh
