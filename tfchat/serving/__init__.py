"""Serving: TF Serving SavedModels (`export`, with the in-graph tokenizing and
generation of `graphs`), Hugging Face and keras-hub folders (`hub_export`),
the REST/gRPC client (`client`), and the OpenAI-compatible HTTP server
(`openai_api`, behind FastAPI in `http_server`)."""
