"""Reports: figures, HTML and PDF from the results store."""
