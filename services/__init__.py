"""Maata's microservices: thin gRPC adapters over the model library (codec, generation,
session store, gateway). ``maata serve`` runs them all in one process or one per process.
Their gRPC code is ``maata_protos.v1``, generated at build time by ``services.protogen``."""
