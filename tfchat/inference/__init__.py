"""Inference: KV-cached generation (`generator`), many requests' generations
batched together (`batching`), the chat session the terminal chat and
feedback use (`chat_session`), and masked-token filling for encoder runs
(`fill_mask`)."""
