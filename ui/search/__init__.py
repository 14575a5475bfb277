"""The search station's sections, each a function pages/7_search.py calls in order: the store and
its collections, adding documents, the documents list, the search results, and the RAG answer."""
