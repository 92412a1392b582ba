"""Application services: submit, cancel, resume; DAG progression; agent reports."""
