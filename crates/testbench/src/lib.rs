//! testbench (skeleton)
