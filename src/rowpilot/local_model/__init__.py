"""The bundled local model (wordllama): embeddings, label scores, dedupe clusters, and
its built-in tasks. Internal."""
