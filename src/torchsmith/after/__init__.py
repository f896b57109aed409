"""Using a finished run: reading its directory, predicting, evaluating, exporting, generating, and the LR finder."""
