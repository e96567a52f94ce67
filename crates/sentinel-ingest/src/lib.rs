//! sentinel-ingest (skeleton)
