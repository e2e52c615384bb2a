"""Progress bars, TensorBoard/text metric logs and plots."""
