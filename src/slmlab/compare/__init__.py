"""slmlab compare: experiment series with honest statistics."""
