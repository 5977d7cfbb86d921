"""The ingestion pipeline: the plugin host, body decoding and validation, the ingest queue and its worker."""
