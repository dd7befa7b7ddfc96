"""Text-to-image: /v1/images/generations, the image backends, storage and signed URLs."""
