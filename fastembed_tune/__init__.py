"""fastembed-tune."""
