//! falcon-stream (skeleton)
