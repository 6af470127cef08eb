"""Generation: sampling a continuation of a prompt from a model, with a KV cache and, for long
texts, a one-token step compiled ahead of time. Above the network (``tinylm.model``), which
knows nothing of it.

    cache.py     the KV cache
    sampling.py  the next token from the logits: greedy, temperature, top_k, top_p
    decode.py    the one-token step compiled with torch.export + AOTInductor
    stream.py    stream and generate; GenerativeLM, the network with both as methods
"""
