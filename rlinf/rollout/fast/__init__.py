"""The built-in fast rollout engine: compact Llama/Qwen forward, slot KV cache, CUDA graphs."""
