//! bridge-buffer (skeleton)
