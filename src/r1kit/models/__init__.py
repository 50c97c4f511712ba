"""Models on disk and in memory: Hugging Face loading and saving, the tiny-model factory, checkpoints, GGUF import,
LoRA, and SFT examples as packed tensors.

- modeling.py: load/save a causal LM and its tokenizer, build a tiny Llama from a seed (layer 2);
- checkpoint.py: atomic Hugging Face checkpoints plus training state, `latest` pointer (layer 2);
- gguf.py: a GGUF file as a Hugging Face directory (layer 2); lora.py: peft adapters, merged copies (layer 2);
- packing.py: completion-only labels and packed rows with block-diagonal attention (layer 1).
"""
