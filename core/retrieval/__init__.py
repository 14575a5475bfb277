"""Documents to answers: parsing, chunking, sentence embeddings, the Chroma index and RAG."""
