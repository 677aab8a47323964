"""Training segmentation networks on CPU: the demo model, fine-tuning and QAT."""
