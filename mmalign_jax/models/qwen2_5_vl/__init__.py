"""Qwen2.5-VL: module, config and presets, Hugging Face weights, image processor."""
