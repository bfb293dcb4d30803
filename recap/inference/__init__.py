"""Inference: thinking-aware chat rendering, model loading, batched generation with KV-cache reuse, and
the generation engines (transformers, llama.cpp, vLLM, an OpenAI-compatible endpoint)."""
