"""Serving: TF Serving SavedModels (`export`, with the in-graph tokenizing and
generation of `graphs`), Hugging Face and keras-hub folders (`hub_export`),
and the REST/gRPC client (`client`)."""
