"""Built-in context embeddings (entry-point group ``flowkit.embeddings``)."""
