"""The dataset study on small CNNs (issue 11): feature maps, top dataset examples, embeddings."""
