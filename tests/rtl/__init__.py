"""cocotb testbenches run by tests/test_*.py through sim.rtl.run_cocotb (pytest skips them)."""
