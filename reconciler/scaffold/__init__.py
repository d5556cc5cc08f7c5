"""The models repository `reconciler init` creates."""
